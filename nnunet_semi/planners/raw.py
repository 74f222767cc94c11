"""Reading and writing nnU-Net raw datasets, with the semi-supervised convention.

Convention (see README, "Semi-supervised datasets"): an unlabeled case is an ordinary training case whose label
file holds nothing but nnU-Net's ignore label. The ignore label is declared in ``dataset.json`` as ``"ignore"``
with the value ``max(label) + 1``, as nnU-Net requires. Everything nnU-Net does with raw datasets
(``--verify_dataset_integrity``, preprocessing, ``gt_segmentations``) therefore keeps working.

Datasets are written atomically: :class:`RawDatasetWriter` builds a hidden staging folder next to the final one
and renames it into place only when everything has been written, so an interrupted or failed command never
leaves a half-written ``DatasetXXX_Name`` folder behind.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets
from nnunetv2.utilities.utils import (
    create_lists_from_splitted_dataset_folder,
    get_filenames_of_train_images_and_targets,
)

from nnunet_semi.errors import UserError
from nnunet_semi.files import remove_stale, write_atomic

STALE_STAGING_HOURS = 1.0  # staging folders older than this belong to a killed run
RUN_TOKEN = uuid.uuid4().hex[:8]  # in this process's staging folder names: its own writers are not "another run"

MANIFEST_FILE = "nnunet_semi.json"
SYNTHETIC_PREFIX = "synth_"


def raw_root() -> Path:
    if not nnUNet_raw.is_set():
        raise UserError("nnUNet_raw is not set. Export nnUNet_raw (and nnUNet_preprocessed, nnUNet_results) "
                           "as described in nnU-Net's documentation/setting_up_paths.md.")
    return Path(nnUNet_raw.get())


def resolve_dataset(name_or_id: str | int) -> str:
    """``27``, ``'027'`` or ``'Dataset027_ACDC'`` -> ``'Dataset027_ACDC'``, which must exist in nnUNet_raw."""
    text = str(name_or_id)
    if text.startswith("Dataset"):
        name = text
    else:
        try:
            dataset_id = int(text)
        except ValueError:
            raise UserError(f"'{text}' is neither a dataset id (e.g. 27) nor a dataset name "
                               f"(e.g. Dataset027_ACDC).") from None
        candidates = sorted(p.name for p in raw_root().glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
        if not candidates:
            raise UserError(f"Dataset id {dataset_id} does not exist in nnUNet_raw ({raw_root()}). "
                               f"Convert the dataset first (e.g. python -m nnunetv2.dataset_conversion."
                               f"Dataset027_ACDC -i ...) or check nnUNet_raw.")
        if len(candidates) > 1:
            raise UserError(f"Dataset id {dataset_id} is ambiguous in {raw_root()}: {candidates}.")
        name = candidates[0]
    if not (raw_root() / name / "dataset.json").is_file():
        raise UserError(f"{raw_root() / name / 'dataset.json'} does not exist: '{name}' is not a raw "
                           f"nnU-Net dataset.")
    return name


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise UserError(f"Dataset id {dataset_id} is outside 1..999, which nnU-Net requires.")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise UserError(f"Dataset name '{name}' may only contain letters, digits, '_' and '-'.")
    return f"Dataset{dataset_id:03d}_{name}"


def ensure_dataset_id_free(dataset_id: int) -> None:
    """Refuse ids that nnU-Net already knows in nnUNet_raw, nnUNet_preprocessed or nnUNet_results."""
    existing = sorted(str(name) for name in find_candidate_datasets(dataset_id))
    if existing:
        where = [str(p) for p in (nnUNet_raw, nnUNet_preprocessed, nnUNet_results) if p.is_set()]
        raise UserError(f"Dataset id {dataset_id} is already used by {existing} (looked in {where}). "
                           f"Choose a free id; nothing was written.")


def read_dataset_json(name: str) -> dict:
    with open(raw_root() / name / "dataset.json") as f:
        return json.load(f)


def read_manifest(name: str) -> dict | None:
    path = raw_root() / name / MANIFEST_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def training_cases(name: str) -> dict[str, dict]:
    """``{case_id: {'images': [...], 'label': path}}`` exactly as nnU-Net sees the dataset."""
    folder = raw_root() / name
    return get_filenames_of_train_images_and_targets(str(folder), read_dataset_json(name))


def test_cases(name: str) -> dict[str, dict]:
    """Cases in ``imagesTs`` with their reference in ``labelsTs`` (label ``None`` where there is none)."""
    folder = raw_root() / name
    dataset_json = read_dataset_json(name)
    ending = dataset_json["file_ending"]
    if not (folder / "imagesTs").is_dir():
        return {}
    image_lists = create_lists_from_splitted_dataset_folder(str(folder / "imagesTs"), ending, num_processes=1)
    cases = {}
    for images in image_lists:
        case = os.path.basename(images[0])[: -len(ending) - 5]
        label = folder / "labelsTs" / f"{case}{ending}"
        cases[case] = {"images": images, "label": str(label) if label.is_file() else None}
    return cases


def reader_writer_for(dataset_json: dict, example_file: str) -> BaseReaderWriter:
    return determine_reader_writer_from_dataset_json(dataset_json, example_file, allow_nonmatching_filename=True,
                                                     verbose=False)()


def ignore_label_value(labels: dict) -> int:
    """The dataset's ignore label, or the value nnU-Net requires for a new one (highest label + 1)."""
    if "ignore" in labels:
        return int(labels["ignore"])
    values = []
    for value in labels.values():
        values.extend(value if isinstance(value, (list, tuple)) else [value])
    return int(max(values)) + 1


def labels_with_ignore(labels: dict) -> dict:
    return {**labels, "ignore": ignore_label_value(labels)}


def save_json_atomic(obj, path: str | os.PathLike) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
    write_atomic(Path(path), dump)


def read_case_list(path: str | os.PathLike) -> list[str]:
    """Case or group ids, one per line (blank lines and ``#`` comments skipped), order kept."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Case list {path} does not exist.")
    entries = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line)
    if not entries:
        raise UserError(f"Case list {path} is empty.")
    return entries


class RawDatasetWriter:
    """Builds one raw nnU-Net dataset in a staging folder; :meth:`commit` renames it into place.

    Use as a context manager: leaving the block with an exception deletes the staging folder, leaving the block
    normally does *not* commit (several writers are committed together by :func:`commit_all`).
    """

    def __init__(self, dataset_id: int, name: str, dataset_json: dict):
        self.name = dataset_folder_name(dataset_id, name)
        self.final_folder = raw_root() / self.name
        if self.final_folder.exists():
            raise UserError(f"{self.final_folder} already exists; nothing was written.")
        raw_root().mkdir(parents=True, exist_ok=True)
        others = [p for p in raw_root().glob(".Dataset*.staging-*") if f"-{RUN_TOKEN}-" not in p.name]
        remove_stale(others, STALE_STAGING_HOURS, "a staging folder")
        self.folder = raw_root() / f".{self.name}.staging-{RUN_TOKEN}-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir()
        self.dataset_json = dict(dataset_json)
        self.ending = dataset_json["file_ending"]
        self.training: list[str] = []
        self.test: list[str] = []
        self.manifest: dict = {}
        self._rw: BaseReaderWriter | None = None

    def __enter__(self) -> "RawDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _reader_writer(self, example_file: str) -> BaseReaderWriter:
        if self._rw is None:
            self._rw = reader_writer_for(self.dataset_json, example_file)
        return self._rw

    def _copy_images(self, case: str, images: Sequence[str], subfolder: str) -> None:
        target = self.folder / subfolder
        target.mkdir(exist_ok=True)
        for channel, image in enumerate(images):
            shutil.copyfile(image, target / f"{case}_{channel:04d}{self.ending}")

    def _check_new(self, case: str) -> None:
        if case in self.training or case in self.test:
            raise UserError(f"Case id '{case}' occurs twice in dataset {self.name}.")

    def add_labeled(self, case: str, images: Sequence[str], label: str) -> None:
        self._check_new(case)
        self._copy_images(case, images, "imagesTr")
        (self.folder / "labelsTr").mkdir(exist_ok=True)
        shutil.copyfile(label, self.folder / "labelsTr" / f"{case}{self.ending}")
        self.training.append(case)

    def add_unlabeled(self, case: str, images: Sequence[str]) -> None:
        """Copy the images and write a label file that is entirely the ignore label, with the image geometry."""
        self._check_new(case)
        self._copy_images(case, images, "imagesTr")
        rw = self._reader_writer(images[0])
        image, properties = rw.read_images([images[0]])
        ignore_value = self.dataset_json["labels"]["ignore"]
        ignore = np.full(image.shape[1:], ignore_value, dtype=np.uint8 if ignore_value < 256 else np.uint16)
        (self.folder / "labelsTr").mkdir(exist_ok=True)
        rw.write_seg(ignore, str(self.folder / "labelsTr" / f"{case}{self.ending}"), properties)
        self.training.append(case)

    def new_training_case(self, case: str, num_image_files: int = 1) -> tuple[list[Path], Path]:
        """Register a training case whose files the caller writes itself; returns (image paths, label path)."""
        self._check_new(case)
        for sub in ("imagesTr", "labelsTr"):
            (self.folder / sub).mkdir(exist_ok=True)
        self.training.append(case)
        images = [self.folder / "imagesTr" / f"{case}_{c:04d}{self.ending}" for c in range(num_image_files)]
        return images, self.folder / "labelsTr" / f"{case}{self.ending}"

    def add_test(self, case: str, images: Sequence[str], label: str | None) -> None:
        self._check_new(case)
        self._copy_images(case, images, "imagesTs")
        if label is not None:
            (self.folder / "labelsTs").mkdir(exist_ok=True)
            shutil.copyfile(label, self.folder / "labelsTs" / f"{case}{self.ending}")
        self.test.append(case)

    def _finalise_metadata(self) -> None:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (self.folder / sub).mkdir(exist_ok=True)
        self.dataset_json["numTraining"] = len(self.training)
        self.dataset_json["name"] = self.name
        save_json_atomic(self.dataset_json, self.folder / "dataset.json")
        if self.manifest:
            save_json_atomic(self.manifest, self.folder / MANIFEST_FILE)

    def commit(self) -> None:
        commit_all([self])


def commit_all(writers: Iterable[RawDatasetWriter]) -> None:
    """Write metadata, then rename every staging folder into place; on any failure remove what was renamed."""
    writers = list(writers)
    for w in writers:
        if w.final_folder.exists():
            raise UserError(f"{w.final_folder} appeared while writing; nothing was committed.")
        w._finalise_metadata()
    done: list[RawDatasetWriter] = []
    try:
        for w in writers:
            os.rename(w.folder, w.final_folder)
            done.append(w)
    except BaseException:
        for w in done:
            shutil.rmtree(w.final_folder, ignore_errors=True)
        raise
