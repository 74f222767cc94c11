"""``nnunet-semi convert-2d``: folders of 2D images and masks -> a raw nnU-Net dataset of PNG files.

Images may be PNG, JPEG, TIFF or BMP, grey or RGB; they are written losslessly as PNG, RGB as one ``_0000.png``
file with channels R, G, B (nnU-Net's natural-image convention, z-score normalised per channel). Masks are either
thresholded (``mask > threshold`` is foreground, the default, right for JPEG masks such as Kvasir-SEG's) or taken as
label values. With ``--size`` every pair is resized to exactly that size (aspect ratio not kept: images bilinear,
thresholded masks bilinear before thresholding, label-value masks nearest).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from nnunetv2.configuration import default_num_processes
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.planners.raw import RawDatasetWriter, commit_all, ensure_dataset_id_free
from nnunet_semi.cli_text import help_text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
GREY_MODES = ("L", "I;16", "I")


@dataclass(frozen=True)
class ConversionOptions:
    rgb: bool
    size: tuple[int, int] | None  # (height, width)
    threshold: float | None  # None: masks hold label values
    max_label: int


def _files_by_stem(folder: Path, suffix_to_strip: str = "") -> dict[str, Path]:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder.")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            stem = path.stem
            if suffix_to_strip and stem.endswith(suffix_to_strip):
                stem = stem[: -len(suffix_to_strip)]
            files[stem] = path
    return files


def pair_images_and_masks(images_dir: str | Path, masks_dir: str | Path,
                          mask_suffix: str = "") -> dict[str, tuple[Path, Path]]:
    """case -> (image, mask), matched by file name stem (``mask_suffix`` removed from mask stems)."""
    images = _files_by_stem(Path(images_dir))
    masks = _files_by_stem(Path(masks_dir), mask_suffix)
    if not images:
        raise UserError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    unpaired_images, unpaired_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if unpaired_images or unpaired_masks:
        raise UserError(f"Images and masks do not pair up by file name: {len(unpaired_images)} images without a "
                        f"mask (e.g. {unpaired_images[:3]}), {len(unpaired_masks)} masks without an image (e.g. "
                        f"{unpaired_masks[:3]}). Use --mask-suffix if mask names carry a suffix.")
    return {case.replace(" ", "_"): (images[case], masks[case]) for case in sorted(images)}


def _resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array channel by channel in float precision."""
    channels = array[..., None] if array.ndim == 2 else array
    resized = [np.asarray(Image.fromarray(channels[..., c].astype(np.float32), mode="F")
                          .resize((size[1], size[0]), resample)) for c in range(channels.shape[-1])]
    out = np.stack(resized, -1)
    return out[..., 0] if array.ndim == 2 else out


def open_image(path: Path) -> Image.Image:
    """PIL's image, or a message naming the file that cannot be read."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise UserError(f"Cannot read {path} ({e}); replace or remove the file.") from None
    return image


def check_masks_for_threshold(mask_values: list[set[int]], threshold: float) -> None:
    """Stop when thresholding would silently write an all-background dataset: every mask's maximum is at most the
    threshold although some masks are not empty, i.e. the masks hold label values (0/1, 0/1/2), not 0/255.
    ``mask_values``: the distinct values of each (unthresholded) mask."""
    values = set().union(*mask_values)
    if 0 < max(values) <= threshold:
        raise UserError(f"Every mask is at most {max(values)} (values found: {sorted(values)[:10]}), so the "
                        f"threshold 'mask > {threshold:g}' would make every label background. These masks hold "
                        f"label values: use --mask-values (with one --label-names entry per label), or lower "
                        f"--threshold.")


def convert_pair(image_path: Path, mask_path: Path,
                 options: ConversionOptions) -> tuple[np.ndarray, np.ndarray, set[int]]:
    """(image (H, W) or (H, W, 3) in its own integer type, label map (H, W) uint8, the distinct values of the mask
    as read, for :func:`check_masks_for_threshold`)."""
    with open_image(image_path) as im:
        if options.rgb:
            im = im.convert("RGB")
        elif im.mode not in GREY_MODES:
            im = im.convert("L")
        image = np.asarray(im)
    with open_image(mask_path) as m:
        mask = np.asarray(m.convert("L")) if options.threshold is not None else np.asarray(m)
    if mask.ndim != 2:
        raise UserError(f"Mask {mask_path} has shape {mask.shape}; label-value masks must be single-channel.")
    if image.shape[:2] != mask.shape:
        raise UserError(f"{image_path} ({image.shape[1]}x{image.shape[0]}) and {mask_path} "
                        f"({mask.shape[1]}x{mask.shape[0]}) differ in size.")
    mask_values = {int(v) for v in np.unique(mask)}
    if options.size is not None:
        dtype = image.dtype
        image = np.clip(np.round(_resize(image, options.size, Image.BILINEAR)),
                        np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        mask = _resize(mask, options.size, Image.BILINEAR if options.threshold is not None else Image.NEAREST)
    if options.threshold is not None:
        labels = (mask > options.threshold).astype(np.uint8)
    else:
        labels = np.round(mask).astype(np.int64)
        if labels.min() < 0 or labels.max() > options.max_label:
            values = [int(v) for v in np.unique(labels)[:10]]
            raise UserError(f"Mask {mask_path} has values {values}; with --mask-values labels must lie in "
                            f"0..{options.max_label} (one --label-names entry per label).")
        labels = labels.astype(np.uint8)
    return image, labels, mask_values


def _convert_and_write(job: tuple) -> set[int]:
    """Convert and write one pair; returns the mask's distinct values."""
    image_path, mask_path, out_image, out_label, options = job
    image, labels, mask_values = convert_pair(image_path, mask_path, options)
    Image.fromarray(image).save(out_image)
    Image.fromarray(labels).save(out_label)
    return mask_values


def _any_colour_image(paths) -> bool:
    for path in paths:
        with open_image(path) as im:
            if im.mode not in (*GREY_MODES, "1"):
                return True
    return False


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'128' -> (128, 128); '96x128' -> (96, 128) as height x width."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise UserError(f"--size must look like 128 or 96x128 (height x width), got '{text}'.") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise UserError(f"--size must look like 128 or 96x128 with sides >= 8, got '{text}'.")
    return parts[0], parts[1]


def convert_2d_dataset(images_dir: str, masks_dir: str, dataset_id: int, name: str,
                       label_names: list[str] | None = None, size: str | None = None, colour: str = "auto",
                       threshold: float | None = 127, mask_suffix: str = "",
                       num_processes: int = default_num_processes) -> str:
    """Write the dataset and return its name. ``threshold=None`` reads masks as label values."""
    ensure_dataset_id_free(dataset_id)
    pairs = pair_images_and_masks(images_dir, masks_dir, mask_suffix)
    label_names = label_names or ["foreground"]
    if threshold is not None and len(label_names) != 1:
        raise UserError("Thresholded masks have one foreground label: give one --label-names entry, or use "
                        "--mask-values for masks that hold several label values.")
    rgb = {"rgb": True, "grey": False}.get(colour)
    if rgb is None:
        rgb = _any_colour_image(p[0] for p in pairs.values())
    options = ConversionOptions(rgb=rgb, size=parse_size(size), threshold=threshold, max_label=len(label_names))
    dataset_json = {
        "channel_names": {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "grey"},
        "labels": {"background": 0, **{n: i + 1 for i, n in enumerate(label_names)}},
        "file_ending": ".png",
        "description": f"converted by nnunet-semi convert-2d from {images_dir} and {masks_dir}",
    }
    with RawDatasetWriter(dataset_id, name, dataset_json) as writer:
        jobs = []
        for case, (image_path, mask_path) in pairs.items():
            out_images, out_label = writer.new_training_case(case)
            jobs.append((image_path, mask_path, out_images[0], out_label, options))
        with get_context("spawn").Pool(num_processes) as pool:
            mask_values = list(tqdm(pool.imap_unordered(_convert_and_write, jobs, chunksize=4), total=len(jobs),
                                    desc=f"Converting {len(jobs)} image/mask pairs"))
        if threshold is not None:  # before the commit: a refused dataset leaves nothing behind
            check_masks_for_threshold(mask_values, threshold)
        commit_all([writer])
    return writer.name


def _run(args: argparse.Namespace) -> int:
    name = convert_2d_dataset(args.images, args.masks, args.id, args.name, args.label_names, args.size,
                              args.colour, None if args.mask_values else args.threshold, args.mask_suffix,
                              args.num_processes)
    print(f"Wrote {name}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert-2d", help="folders of 2D images + masks -> raw nnU-Net dataset",
                                   description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="folder of images")
    parser.add_argument("masks", help="folder of masks, matched to images by file name")
    parser.add_argument("-o", "--id", type=int, required=True, help="dataset id to write")
    parser.add_argument("-n", "--name", required=True, help="dataset name, e.g. KvasirSEG")
    parser.add_argument("--label-names", nargs="+", help="names of labels 1, 2, ... (default: foreground)")
    parser.add_argument("--size", help="resize every pair to this size: 128 or HxW")
    parser.add_argument("--colour", choices=("auto", "rgb", "grey"), default="auto",
                        help="auto: RGB if any image is in colour")
    parser.add_argument("--threshold", type=float, default=127, help="mask > threshold is foreground (default 127)")
    parser.add_argument("--mask-values", action="store_true", help="masks hold label values 0..K; no threshold")
    parser.add_argument("--mask-suffix", default="", help="suffix of mask file stems, e.g. _mask")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes,
                        help=f"worker processes (default: nnUNet_def_n_proc or nnU-Net's default, here "
                             f"{default_num_processes})")
    parser.set_defaults(func=_run)
