"""FID reports: which images are compared (folders, datasets, classes of a synthesis manifest), a JSON report and
a PNG grid of real above synthetic images.

A REAL or SYNTH argument is a folder of image files (PNG/JPEG/BMP/TIF, read as RGB like pytorch-fid does) or a raw
dataset: its real cases as REAL, its ``synth_*`` cases as SYNTH. Dataset images are 2D images or slices prepared
exactly as for GAN training (:class:`DataSpec`: resolution, intensity window to 8 bits). When SYNTH is a dataset
with a ``synthesis_manifest.json``, every class is also compared on its own: the real images the class's generator
was trained on (read from REAL) against the synthetic images of that class.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw
from nnunet_semi.synthesis.classes import assign_classes
from nnunet_semi.synthesis.data import DataSpec, ImageRef, build_spec, dataset_reader, default_resolution, load_images
from nnunet_semi.synthesis.fid import FidNetwork, cached_inception_features, frechet_distance, inception_features
from nnunet_semi.synthesis.grid import save_comparison_grid
from nnunet_semi.synthesis.writer import read_synthesis_manifest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SMALL_SET_NOTE = ("FID is biased upwards for small sets (pytorch-fid recommends >= 2048 images); compare values only "
                  "at equal set sizes.")

Pairs = dict[str, tuple[list[np.ndarray], list[np.ndarray]]]


def subsample(items: list, max_items: int | None, seed: int = 0) -> list:
    """At most ``max_items`` of ``items``, a fixed random subset in the original order."""
    if max_items is None or len(items) <= max_items:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=max_items, replace=False))
    return [items[i] for i in keep]


def images_from_folder(folder: Path, max_images: int | None) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder} contains no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return [np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1) for f in subsample(files, max_images)]


def latest_class_specs(manifest: dict) -> dict[str, DataSpec]:
    """Class -> the data spec of the last run that generated it."""
    specs = {}
    for run in manifest["runs"]:
        for class_name, info in run["classes"].items():
            specs[class_name] = DataSpec.from_dict(info["data_spec"])
    return specs


def dataset_spec(name: str) -> DataSpec:
    """A spec over all real images of ``name`` (for datasets without a synthesis manifest)."""
    refs = assign_classes(name, "all")["all"]
    return build_spec(name, "all", refs, default_resolution(name, refs), "resize")


def synthetic_sets(name: str, max_images: int | None) -> dict[str, tuple[DataSpec | None, list[np.ndarray]]]:
    """Class -> (its generator's spec, its synthetic images) from the manifest; without a manifest one class 'all'
    with no spec (the images are then prepared like the real images of ``name``)."""
    manifest = read_synthesis_manifest(raw.raw_root() / name)
    specs: dict[str, DataSpec | None] = dict(latest_class_specs(manifest))
    if specs:
        groups = {c: [case for case, v in manifest["images"].items() if v["class"] == c] for c in specs}
    else:
        specs = {"all": None}
        groups = {"all": list(dataset_reader(name, synthetic=True)[1])}
    out = {}
    for class_name, spec in specs.items():
        reader_spec = spec or dataset_spec(name)
        refs = subsample([ImageRef(c, 0) for c in groups[class_name]], max_images)
        out[class_name] = (spec, list(load_images(reader_spec, refs, dataset=name, synthetic=True)))
    return out


def real_images(name: str, spec: DataSpec | None, max_images: int | None) -> list[np.ndarray]:
    """The real images of a class (``spec``) or all real images of ``name``, read from ``name``."""
    spec = spec or dataset_spec(name)
    return list(load_images(spec, subsample(spec.refs, max_images), dataset=name))


def resolve_source(text: str) -> tuple[str, str | Path]:
    """('folder', Path) or ('dataset', name) for a REAL / SYNTH argument."""
    path = Path(text)
    if path.is_dir() and not (path / "dataset.json").is_file():
        return "folder", path
    return "dataset", raw.resolve_dataset(path.name if path.is_dir() else text)


def collect_pairs(real: str, synthetic: str, max_images: int | None) -> Pairs:
    """Class -> (real images, synthetic images), uint8 [C, H, W]; per class only when both are datasets."""
    real_kind, real_src = resolve_source(real)
    synth_kind, synth_src = resolve_source(synthetic)
    if synth_kind == "dataset":
        sets = synthetic_sets(synth_src, max_images)
    else:
        sets = {"all": (None, images_from_folder(synth_src, max_images))}
    if real_kind == "dataset":
        return {c: (real_images(real_src, spec, max_images), images) for c, (spec, images) in sets.items()}
    pooled = subsample([image for _, images in sets.values() for image in images], max_images)
    return {"all": (images_from_folder(real_src, max_images), pooled)}


def mixed_formats_note(pairs: Pairs) -> str | None:
    """A note when the compared images differ in size or channel count (FID then also measures the difference in
    format: each image is resized to 299 x 299 and grey is repeated to RGB)."""
    images = [image for real, synthetic in pairs.values() for image in (*real, *synthetic)]
    sizes = sorted({tuple(image.shape[1:]) for image in images})
    channels = sorted({image.shape[0] for image in images})
    if len(sizes) == 1 and len(channels) == 1:
        return None
    return (f"Note: the images differ in format (sizes {sizes[:4]}{' ...' if len(sizes) > 4 else ''}, channels "
            f"{channels}); Inception sees each resized to 299 x 299 and grey repeated to RGB, so FID also measures "
            f"these differences. Compare images of one size and colour mode for a fair number.")


def fid_report(pairs: Pairs, network: FidNetwork, real_desc: str, synthetic_desc: str, batch_size: int = 50,
               device: str = "cpu") -> dict:
    """FID per class (when several) and over all classes together, with set sizes and the weights used."""
    features = {}
    for class_name, (real_images, synth_images) in pairs.items():
        features[class_name] = (cached_inception_features(network, real_images, batch_size, device,
                                                          f"real {class_name}"),
                                inception_features(network, synth_images, batch_size, device,
                                                   f"synthetic {class_name}"))
    all_real = np.concatenate([f[0] for f in features.values()])
    all_synth = np.concatenate([f[1] for f in features.values()])
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "real": real_desc, "synthetic": synthetic_desc,
              "fid": frechet_distance(all_real, all_synth), "num_real": len(all_real),
              "num_synthetic": len(all_synth),
              "feature_extractor": "pytorch-fid InceptionV3 pool3 (2048-d), TF Inception-v3 2015-12-05 weights, "
                                   "bilinear resize to 299x299",
              "inception_weights": network.weights,
              "weights_check_max_abs_diff": network.weight_check_max_abs_diff}
    if len(features) > 1:
        report["per_class"] = {c: {"fid": frechet_distance(r, s) if min(len(r), len(s)) >= 2 else None,
                                   "num_real": len(r), "num_synthetic": len(s)} for c, (r, s) in features.items()}
    if min(len(all_real), len(all_synth)) < 2048:
        report["note"] = SMALL_SET_NOTE
    return report


def write_report(report: dict, pairs: Pairs, json_path: Path) -> Path:
    """Write the JSON report and, next to it, ``<name>.png``: real above synthetic images per class."""
    grid_path = json_path.with_suffix(".png")
    rows = 2 if len(pairs) > 1 else 4
    sections = [(c, r, s) for c, (r, s) in pairs.items()]
    size = max(min(128, s[0].shape[-1]) if s else 64 for _, _, s in sections)
    save_comparison_grid(sections, grid_path, rows=rows, size=size)
    report["grid"] = str(grid_path)
    raw.save_json_atomic(report, json_path)
    return grid_path

