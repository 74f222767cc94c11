"""Synthetic images as unlabeled cases of a raw nnU-Net dataset, written atomically, with a manifest.

A synthetic case ``synth_<class>_<NNNNNN>`` is an ordinary training case in the dataset's own file format: for 2D
natural-image datasets (nnU-Net's ``NaturalImage2DIO``) one RGB PNG ``_0000`` file (or one grey file per channel);
for ``SimpleITKIO`` datasets (NIfTI, .mha, ...) one single-slice volume per channel, with the slice on nnU-Net's 2d
slicing axis, the spacing of the generator's :class:`DataSpec` (the real data's median spacing and field of view)
and the real data's orientation. Its label file is entirely the ignore label (``dataset.json`` gains
``"ignore": max_label + 1`` if it has none), written with nnU-Net's own ``write_seg``.

Two targets, both atomic:

* :class:`InPlaceTarget` adds to an existing dataset: files are written to a hidden staging folder inside it, then
  moved in; ``synthesis_manifest.json`` and finally ``dataset.json`` (``numTraining``) are replaced with
  ``save_json_atomic``. If anything fails, the moved files are removed and the old manifest restored.
* :class:`NewDatasetTarget` creates a new dataset: a copy of the source dataset plus the synthetic cases, built in
  :class:`RawDatasetWriter`'s staging folder and renamed into place by ``commit_all``.

``synthesis_manifest.json`` records, per image, the class, the generator file and the seed, and per run the
truncation and the generator's data spec (resolution, intensity mapping, the real images of its class).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from skimage import io

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw
from nnunet_semi.synthesis.data import DataSpec, from_unit_range, to_real_size
from nnunet_semi.files import write_atomic

MANIFEST_NAME = "synthesis_manifest.json"
MANIFEST_FORMAT = "nnunet-semi-synthesis/1"
STAGING_PREFIX = ".nnunet-semi-synthesis-"


def empty_manifest() -> dict:
    return {"format": MANIFEST_FORMAT, "runs": [], "images": {}}


def read_synthesis_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return empty_manifest()
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a synthesis manifest of this version ({MANIFEST_FORMAT}); move it away.")
    return manifest


class CaseFileWriter:
    """Writes one synthetic case (image files and an all-ignore label) in the format of the dataset's real cases."""

    def __init__(self, dataset_json: dict, example_images: list[str], ignore_value: int):
        self.rw = raw.reader_writer_for(dataset_json, example_images[0])
        if type(self.rw) not in (NaturalImage2DIO, SimpleITKIO):
            raise UserError(f"Writing synthetic cases supports datasets read by NaturalImage2DIO (PNG, BMP, TIF) or "
                            f"SimpleITKIO (NIfTI, MHA, NRRD); this dataset uses {type(self.rw).__name__}.")
        self.ending = dataset_json["file_ending"]
        self.num_files = len(example_images)
        self.ignore_value = ignore_value
        example, properties = self.rw.read_images(example_images)
        self.channels = example.shape[0]
        self.sitk_geometry = properties["sitk_stuff"] if isinstance(self.rw, SimpleITKIO) else None

    def check_compatible(self, spec: DataSpec) -> None:
        if spec.channels != self.channels:
            raise UserError(f"The generator of class '{spec.class_name}' makes {spec.channels}-channel images, but "
                            f"the dataset's images have {self.channels} channel(s).")
        files = 1 if spec.rgb else spec.channels
        if files != self.num_files:
            raise UserError(f"The generator of class '{spec.class_name}' makes {spec.channels}-channel images "
                            f"({'one RGB file' if spec.rgb else 'one file per channel'}), but the dataset's cases "
                            f"have {self.num_files} image file(s).")

    def write(self, folder: Path, case: str, images: np.ndarray, spec: DataSpec) -> None:
        """``images``: generator output [C, R, R] in [-1, 1]; mapped back to the dataset's intensities, and for
        natural-image files to the real images' size (``spec.output_size``)."""
        if isinstance(self.rw, NaturalImage2DIO):
            images = to_real_size(torch.from_numpy(images[None]), spec.output_size, spec.fit)[0].numpy()
        values = from_unit_range(images[None], spec.intensity_ranges)[0]
        label_path = str(folder / "labelsTr" / f"{case}{self.ending}")
        if isinstance(self.rw, NaturalImage2DIO):
            self._write_natural(folder, case, values, spec)
            seg = np.full((1, *values.shape[1:]), self.ignore_value, dtype=np.uint8)
            self.rw.write_seg(seg, label_path, {})
        else:
            geometry = self._sitk_geometry(spec)
            for channel, plane in enumerate(values):
                self._write_sitk(self._as_volume(plane, spec, geometry), folder / "imagesTr" /
                                 f"{case}_{channel:04d}{self.ending}", geometry)
            seg = np.full(values.shape[1:], self.ignore_value, dtype=np.uint8)
            seg = self._as_volume(seg, spec, geometry)
            self.rw.write_seg(seg if seg.ndim == 3 else seg[None], label_path, {"sitk_stuff": geometry})

    def _write_natural(self, folder: Path, case: str, values: np.ndarray, spec: DataSpec) -> None:
        dtype, top = (np.uint8, 255) if spec.natural_image else (np.uint16, 65535)
        pixels = np.clip(np.round(values), 0, top).astype(dtype)
        if spec.rgb:
            io.imsave(folder / "imagesTr" / f"{case}_0000{self.ending}", pixels.transpose(1, 2, 0),
                      check_contrast=False)
            return
        for channel, plane in enumerate(pixels):
            io.imsave(folder / "imagesTr" / f"{case}_{channel:04d}{self.ending}", plane, check_contrast=False)

    def _sitk_geometry(self, spec: DataSpec) -> dict:
        """Spacing from the spec (sitk order is reversed), origin and direction of a real case."""
        dims = len(self.sitk_geometry["spacing"])
        spacing = list(reversed(spec.spacing)) if dims == 3 else list(reversed(spec.spacing[1:]))
        return {"spacing": tuple(spacing), "origin": self.sitk_geometry["origin"],
                "direction": self.sitk_geometry["direction"]}

    @staticmethod
    def _as_volume(plane: np.ndarray, spec: DataSpec, geometry: dict) -> np.ndarray:
        """A 2D plane as a single-slice array with the slice on the slicing axis (3D files) or as is (2D files)."""
        return np.expand_dims(plane, spec.slice_axis) if len(geometry["spacing"]) == 3 else plane

    @staticmethod
    def _write_sitk(array: np.ndarray, path: Path, geometry: dict) -> None:
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.SetSpacing(geometry["spacing"])
        image.SetOrigin(geometry["origin"])
        image.SetDirection(geometry["direction"])
        sitk.WriteImage(image, str(path), True)


def next_case_index(existing: set[str] | list[str], prefix: str) -> int:
    """First free N for case ids ``prefix + f'{N:06d}'``."""
    used = [int(c[len(prefix):]) for c in existing if c.startswith(prefix) and c[len(prefix):].isdigit()]
    return max(used) + 1 if used else 0


class InPlaceTarget:
    """Adds synthetic cases to an existing dataset (see module docstring for the commit order)."""

    def __init__(self, name: str):
        self.name = name
        self.folder = raw.raw_root() / name
        source_json = raw.read_dataset_json(name)
        self.dataset_json = {**source_json, "labels": raw.labels_with_ignore(source_json["labels"])}
        self.cases = raw.training_cases(name)
        self.manifest = read_synthesis_manifest(self.folder)
        self.staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=STAGING_PREFIX))
        for sub in ("imagesTr", "labelsTr"):
            (self.staging / sub).mkdir()

    @property
    def dataset_name(self) -> str:
        return self.name

    def commit(self, new_cases: list[str]) -> None:
        manifest_path = self.folder / MANIFEST_NAME
        old_manifest = manifest_path.read_bytes() if manifest_path.is_file() else None
        moved: list[Path] = []
        try:
            staged = [f for sub in ("imagesTr", "labelsTr") for f in sorted((self.staging / sub).iterdir())]
            clashes = [f.name for f in staged if (self.folder / f.parent.name / f.name).exists()]
            if clashes:
                raise UserError(f"Files {clashes[:3]} already exist in {self.folder}; nothing was added.")
            for f in staged:
                dest = self.folder / f.parent.name / f.name
                os.rename(f, dest)
                moved.append(dest)
            raw.save_json_atomic(self.manifest, manifest_path)
            self.dataset_json["numTraining"] = len(self.cases) + len(new_cases)
            raw.save_json_atomic(self.dataset_json, self.folder / "dataset.json")
        except BaseException:
            for f in moved:
                f.unlink(missing_ok=True)
            if old_manifest is None:
                manifest_path.unlink(missing_ok=True)
            else:
                write_atomic(manifest_path, lambda tmp: Path(tmp).write_bytes(old_manifest))
            raise
        finally:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


class NewDatasetTarget:
    """A new dataset ``Dataset<new_id>_<new_name>``: the source dataset plus the synthetic cases."""

    def __init__(self, source: str, new_id: int, new_name: str):
        raw.ensure_dataset_id_free(new_id)
        source_json = raw.read_dataset_json(source)
        dataset_json = {**source_json, "labels": raw.labels_with_ignore(source_json["labels"])}
        self.writer = raw.RawDatasetWriter(new_id, new_name, dataset_json)
        self.dataset_json = self.writer.dataset_json
        try:
            shutil.copytree(raw.raw_root() / source, self.writer.folder, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".*"))
            for sub in ("imagesTr", "labelsTr"):
                (self.writer.folder / sub).mkdir(exist_ok=True)
            self.cases = raw.training_cases(source)
            self.writer.training = list(self.cases)
            self.writer.manifest = raw.read_manifest(source) or {}
            self.manifest = read_synthesis_manifest(self.writer.folder)
        except BaseException:
            self.writer.discard()
            raise
        self.staging = self.writer.folder

    @property
    def dataset_name(self) -> str:
        return self.writer.name

    def commit(self, new_cases: list[str]) -> None:
        try:
            self.writer.training.extend(new_cases)
            raw.save_json_atomic(self.manifest, self.writer.folder / MANIFEST_NAME)
            raw.commit_all([self.writer])
        except BaseException:
            self.writer.discard()
            raise

    def discard(self) -> None:
        self.writer.discard()
