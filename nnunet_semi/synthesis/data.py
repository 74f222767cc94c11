"""Real images of a raw nnU-Net dataset as GAN training images, and the recipe to turn generated images back.

A GAN image is one 2D image: the case itself for 2D datasets (PNG etc., nnU-Net reads them as [C, 1, H, W]), or
one slice of a 3D case, taken along the axis that nnU-Net's 2d configuration slices (``transpose_forward[0]`` of
the plans when the dataset has been planned, otherwise the axis of largest median spacing, which is how nnU-Net's
planner chooses it).

Every image is made square and brought to the generator resolution:

* ``fit="resize"`` (default) resizes each axis independently (aspect ratio not kept; generated images are square
  and are written with the real data's median field of view, i.e. an anisotropic pixel spacing for NIfTI);
* ``fit="pad"`` pads the shorter axis symmetrically with the channel's low intensity (black), then resizes.

Generated images go back at the real images' median in-plane size (``output_size``), undoing ``fit`` (a bilinear
resize, or for ``pad`` a resize to the longer side and a centre crop), so that synthetic PNG cases are as large as
real ones (PNG carries no spacing that could make up for a smaller image). NIfTI-like files keep the generator's
grid and get the spacing that covers the median field of view instead.

Intensities are mapped channel-wise from ``[lo, hi]`` to [-1, 1] and held in memory as 8 bits, like the PNG data
sets StyleGAN is trained on: 0..255 for natural 8-bit images, otherwise the 0.5 / 99.5 percentiles of the data.
The same ``DataSpec`` (stored in every checkpoint) maps generated images back to the dataset's intensities.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.paths import nnUNet_preprocessed
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw

FIT_MODES = ("resize", "pad")
PERCENTILES = (0.5, 99.5)
MAX_CASES_FOR_PERCENTILES = 50


@dataclass(frozen=True)
class ImageRef:
    """One 2D training image: a training case and the index of its slice along the slicing axis (0 for 2D data)."""

    case: str
    slice_index: int


@dataclass
class DataSpec:
    """How real images of one class became generator images and how generated images go back into the dataset."""

    dataset: str
    class_name: str
    resolution: int
    channels: int
    rgb: bool
    fit: str
    slice_axis: int
    intensity_ranges: list[list[float]]
    spacing: list[float]
    natural_image: bool
    real_images: list[list] = field(default_factory=list)
    output_size: list[int] | None = None  # median in-plane [H, W] of the real images; None in older checkpoints

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(**d)

    @property
    def refs(self) -> list[ImageRef]:
        return [ImageRef(case, int(index)) for case, index in self.real_images]


def check_resolution_option(resolution: int) -> None:
    if resolution < 16 or resolution > 1024 or resolution & (resolution - 1):
        raise UserError(f"--resolution {resolution}: must be a power of two between 16 and 1024 "
                        f"(64 to 512 are the tested sizes).")


def check_fit_option(fit: str) -> None:
    if fit not in FIT_MODES:
        raise UserError(f"--fit {fit}: choose one of {', '.join(FIT_MODES)}.")


def dataset_reader(name: str, synthetic: bool = False) -> tuple[BaseReaderWriter, dict[str, dict]]:
    """The nnU-Net reader of ``name`` and its real (default) or its synthetic (``synth_*``) training cases."""
    cases = {str(c): v for c, v in raw.training_cases(name).items()  # nnU-Net returns numpy strings
             if str(c).startswith(raw.SYNTHETIC_PREFIX) == synthetic}
    if not cases:
        kind = "synthetic (synth_*)" if synthetic else "real"
        raise UserError(f"Dataset {name} has no {kind} training cases in imagesTr.")
    example = next(iter(cases.values()))["images"][0]
    return raw.reader_writer_for(raw.read_dataset_json(name), example), cases


def slice_axis_for(name: str, rw: BaseReaderWriter, cases: dict[str, dict]) -> int:
    """The array axis along which nnU-Net's 2d configuration slices the cases of ``name``."""
    plans = Path(nnUNet_preprocessed.get()) / name / "nnUNetPlans.json" if nnUNet_preprocessed.is_set() else None
    if plans is not None and plans.is_file():
        with open(plans) as f:
            return int(json.load(f)["transpose_forward"][0])
    spacings = [rw.read_seg(v["label"])[1]["spacing"] for v in list(cases.values())[:MAX_CASES_FOR_PERCENTILES]]
    return int(np.argmax(np.median(np.array(spacings, dtype=float), axis=0)))


def take_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """[C, Z, Y, X] -> [C, H, W]: the ``index``-th slice along spatial ``axis``."""
    return np.take(array, index, axis=axis + 1)


def fit_square(images: torch.Tensor, resolution: int, fit: str, pad_values: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] float -> [N, C, resolution, resolution] following ``fit`` (see module docstring)."""
    if fit == "pad":
        h, w = images.shape[-2:]
        size = max(h, w)
        top, left = (size - h) // 2, (size - w) // 2
        canvas = pad_values.to(images.dtype)[None, :, None, None].expand(images.shape[0], -1, size, size).clone()
        canvas[:, :, top:top + h, left:left + w] = images
        images = canvas
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=True)


def to_real_size(images: torch.Tensor, size: list[int], fit: str) -> torch.Tensor:
    """Undo :func:`fit_square`: [N, C, R, R] -> [N, C, H, W] with (H, W) = ``size``."""
    h, w = size
    if fit == "pad":
        side = max(h, w)
        images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        top, left = (side - h) // 2, (side - w) // 2
        return images[:, :, top:top + h, left:left + w]
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def to_uint8(images: torch.Tensor, ranges: list[list[float]]) -> torch.Tensor:
    lo = torch.tensor([r[0] for r in ranges], dtype=images.dtype)[None, :, None, None]
    hi = torch.tensor([r[1] for r in ranges], dtype=images.dtype)[None, :, None, None]
    scaled = (images - lo) / (hi - lo).clamp_min(1e-12) * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8)


def from_unit_range(images: np.ndarray, ranges: list[list[float]]) -> np.ndarray:
    """Generator output in [-1, 1], [N, C, H, W] -> dataset intensities (float32), clipped to [lo, hi]."""
    lo = np.array([r[0] for r in ranges], dtype=np.float32)[None, :, None, None]
    hi = np.array([r[1] for r in ranges], dtype=np.float32)[None, :, None, None]
    unit = (np.clip(images, -1.0, 1.0) + 1.0) / 2.0
    return (lo + unit * (hi - lo)).astype(np.float32)


def intensity_ranges(rw: BaseReaderWriter, cases: dict[str, dict]) -> tuple[list[list[float]], bool]:
    """Per-channel [lo, hi] and whether these are 8-bit natural images (then exactly [0, 255])."""
    sample = list(cases.values())[:MAX_CASES_FOR_PERCENTILES]
    arrays = [rw.read_images(v["images"])[0] for v in sample]
    channels = arrays[0].shape[0]
    if isinstance(rw, NaturalImage2DIO) and max(float(a.max()) for a in arrays) <= 255:
        return [[0.0, 255.0]] * channels, True
    ranges = []
    rng = np.random.default_rng(0)
    for c in range(channels):
        values = np.concatenate([rng.choice(a[c].ravel(), size=min(a[c].size, 100_000), replace=False)
                                 for a in arrays])
        lo, hi = np.percentile(values, PERCENTILES)
        ranges.append([float(lo), float(hi if hi > lo else lo + 1.0)])
    return ranges, False


@dataclass
class MedianGeometry:
    """Median spacing and shape (nnU-Net array order) of a class's real cases, and the in-plane axes."""

    spacing: np.ndarray
    shape: np.ndarray
    in_plane: list[int]

    @property
    def in_plane_size(self) -> list[int]:
        """The median in-plane size [H, W] (a spec's ``output_size``)."""
        return [int(round(self.shape[a])) for a in self.in_plane]


def median_geometry(rw: BaseReaderWriter, cases: dict[str, dict], slice_axis: int) -> MedianGeometry:
    """The :class:`MedianGeometry` of up to 50 cases (their label files are read once)."""
    sample = list(cases.values())[:MAX_CASES_FOR_PERCENTILES]
    spacings, shapes = [], []
    for v in sample:
        seg, props = rw.read_seg(v["label"])
        spacings.append(props["spacing"])
        shapes.append(seg.shape[1:])
    spacing, shape = (np.median(np.array(v, dtype=float), axis=0) for v in (spacings, shapes))
    return MedianGeometry(spacing, shape, [a for a in range(3) if a != slice_axis])


def generated_spacing(geometry: MedianGeometry, resolution: int, fit: str) -> list[float]:
    """Spacing (nnU-Net array order) for generated slices that cover the real data's median field of view."""
    spacing, shape, in_plane = geometry.spacing, geometry.shape, geometry.in_plane
    extent = shape[in_plane] * spacing[in_plane]
    if fit == "pad":
        extent = np.full(2, extent.max())
    out = spacing.copy()
    out[in_plane] = extent / resolution
    return [float(s) for s in out]


def typical_size(spec: DataSpec) -> list[int]:
    """The median in-plane size [H, W] of the real images of ``spec`` (its ``output_size``)."""
    rw, cases = dataset_reader(spec.dataset)
    used = {r.case: cases[r.case] for r in spec.refs if r.case in cases}
    if not used:
        raise UserError(f"None of the real images of class '{spec.class_name}' are in {spec.dataset} any more; "
                        f"cannot tell the size to write synthetic images at.")
    return median_geometry(rw, used, spec.slice_axis).in_plane_size


def default_resolution(name: str, refs: list[ImageRef]) -> int:
    """The power of two nearest to the median image size (longer in-plane side), clipped to 64..512."""
    rw, cases = dataset_reader(name)
    axis = slice_axis_for(name, rw, cases)
    used = list(dict.fromkeys(r.case for r in refs))[:MAX_CASES_FOR_PERCENTILES]
    sizes = [max(s for a, s in enumerate(rw.read_seg(cases[c]["label"])[0].shape[1:]) if a != axis) for c in used]
    return int(min(max(2 ** round(math.log2(float(np.median(sizes)))), 64), 512))


def build_spec(name: str, class_name: str, refs: list[ImageRef], resolution: int, fit: str) -> DataSpec:
    check_resolution_option(resolution)
    check_fit_option(fit)
    if not refs:
        raise UserError(f"Class '{class_name}' of dataset {name} has no images; check the class assignment.")
    rw, cases = dataset_reader(name)
    used = {r.case: cases[r.case] for r in refs}
    ranges, natural = intensity_ranges(rw, used)
    axis = slice_axis_for(name, rw, cases)
    geometry = median_geometry(rw, used, axis)
    return DataSpec(dataset=name, class_name=class_name, resolution=resolution, channels=len(ranges),
                    rgb=natural and len(ranges) == 3, fit=fit, slice_axis=axis, intensity_ranges=ranges,
                    spacing=generated_spacing(geometry, resolution, fit), natural_image=natural,
                    real_images=[[str(r.case), int(r.slice_index)] for r in refs],
                    output_size=geometry.in_plane_size)


def load_images(spec: DataSpec, refs: list[ImageRef] | None = None, progress: bool = True,
                dataset: str | None = None, synthetic: bool = False) -> np.ndarray:
    """Images ``refs`` (default: the real images of ``spec``) as uint8 [N, C, R, R], prepared as ``spec`` says.

    ``dataset`` reads them from another dataset than ``spec.dataset`` (e.g. a copy made by ``synthesize``);
    ``synthetic`` reads synthetic cases instead of real ones.
    """
    refs = spec.refs if refs is None else refs
    dataset = dataset or spec.dataset
    rw, cases = dataset_reader(dataset, synthetic)
    missing = sorted({r.case for r in refs} - set(cases))
    if missing:
        raise UserError(f"Cases {missing[:5]} of class '{spec.class_name}' are not training cases of {dataset}.")
    by_case: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        by_case.setdefault(r.case, []).append(i)
    out = np.zeros((len(refs), spec.channels, spec.resolution, spec.resolution), dtype=np.uint8)
    pad_values = torch.tensor([r[0] for r in spec.intensity_ranges], dtype=torch.float32)
    for case, positions in tqdm(by_case.items(), desc=f"loading {spec.class_name}", disable=not progress):
        array = rw.read_images(cases[case]["images"])[0]
        if array.shape[0] != spec.channels:
            raise UserError(f"Case {case} of {dataset} has {array.shape[0]} channels, expected "
                            f"{spec.channels}.")
        slices = np.stack([take_slice(array, spec.slice_axis, refs[i].slice_index) for i in positions])
        fitted = fit_square(torch.from_numpy(slices.astype(np.float32)), spec.resolution, spec.fit, pad_values)
        out[positions] = to_uint8(fitted, spec.intensity_ranges).numpy()
    return out
