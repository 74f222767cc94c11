"""Which real 2D images each class-specific generator is trained on (SSGNet trains one StyleGAN per class).

``--classes`` takes one of:

* ``all``: one generator for every real training image (class name ``all``);
* ``mask``: the class of an image is the set of foreground labels present in its mask, e.g. ``polyp`` or
  ``no_foreground``; several labels are joined with ``+`` (``RV+MYO+LV``). Images whose mask is entirely or partly
  the ignore label (unlabeled cases, sparse annotations) have no known class and are left out;
* ``mask:LABEL``: presence of one foreground label: classes ``LABEL`` and ``no_LABEL`` (same rule for ignore);
* a ``.csv`` file (``case_id,class`` per line, optional header) or ``.json`` file (``{"case_id": "class"}``):
  every image of a listed case gets that class; unlisted cases are not used.

Synthetic cases (``synth_*``) are never used. ``labeled_only`` drops unlabeled cases (mask entirely ignore), as
SRA-Seg trains its GAN on the labeled images only. For 3D data, mask classes are per slice, file classes per case.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw
from nnunet_semi.synthesis.data import ImageRef, dataset_reader, slice_axis_for, take_slice

NO_FOREGROUND = "no_foreground"


def class_slug(class_name: str) -> str:
    """Class name as used in folder names and case ids: letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", class_name)


def foreground_labels(labels: dict) -> dict[str, list[int]]:
    """Foreground label name -> the integer values that make it up (region-based labels have several)."""
    out = {}
    for name, value in labels.items():
        if name in ("background", "ignore"):
            continue
        out[name] = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return out


def read_class_file(path: Path, known_cases: set[str]) -> dict[str, str]:
    """``case_id -> class`` from a CSV (two columns; a first row whose case is unknown is a header) or JSON."""
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"--classes {path}: not valid JSON ({e}).") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, (str, int)) for v in mapping.values()):
            raise UserError(f"--classes {path}: expected a JSON object {{\"case_id\": \"class\", ...}}.")
        return {str(k): str(v) for k, v in mapping.items()}
    if path.suffix.lower() != ".csv":
        raise UserError(f"--classes {path}: expected a .csv or .json file, 'all', 'mask' or 'mask:LABEL'.")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(cell.strip() for cell in r)]
    if any(len(r) != 2 for r in rows):
        bad = next(i for i, r in enumerate(rows) if len(r) != 2)
        raise UserError(f"--classes {path}: row {bad + 1} has {len(rows[bad])} columns; expected 'case_id,class'.")
    if rows and rows[0][0].strip() not in known_cases:
        rows = rows[1:]
    return {r[0].strip(): r[1].strip() for r in rows}


def _slices(name: str) -> tuple[dict[str, np.ndarray], int]:
    """Every real case's label array [Z, Y, X] (as read by nnU-Net) and the slicing axis."""
    rw, cases = dataset_reader(name)
    axis = slice_axis_for(name, rw, cases)
    segs = {c: rw.read_seg(v["label"])[0][0] for c, v in tqdm(cases.items(), desc="reading masks", leave=False)}
    return segs, axis


def _mask_class(present: list[str], label: str | None) -> str:
    if label is None:
        return "+".join(present) if present else NO_FOREGROUND
    return label if label in present else f"no_{label}"


def assign_classes(name: str, classes: str, labeled_only: bool = False) -> dict[str, list[ImageRef]]:
    """Class name -> its 2D images, following ``classes`` (see module docstring). Classes are sorted by name."""
    dataset_json = raw.read_dataset_json(name)
    labels = dataset_json["labels"]
    ignore = int(labels["ignore"]) if "ignore" in labels else None
    foreground = foreground_labels(labels)
    mask_label = None
    if classes.startswith("mask:"):
        mask_label = classes.split(":", 1)[1]
        if mask_label not in foreground:
            raise UserError(f"--classes {classes}: '{mask_label}' is not a foreground label of {name} "
                            f"(labels: {sorted(foreground)}).")
    use_file = classes not in ("all", "mask") and mask_label is None
    if use_file and not Path(classes).is_file():
        raise UserError(f"--classes {classes}: not 'all', 'mask', 'mask:LABEL' or an existing .csv/.json file.")
    segs, axis = _slices(name)
    mapping = None
    if use_file:
        mapping = read_class_file(Path(classes), set(segs))
        unknown = sorted(set(mapping) - set(segs))
        if unknown:
            raise UserError(f"--classes {classes}: cases {unknown[:5]} are not real training cases of {name}.")
    out: dict[str, list[ImageRef]] = {}
    for case, seg in segs.items():
        unlabeled = ignore is not None and bool(np.all(seg == ignore))
        if labeled_only and unlabeled:
            continue
        if mapping is not None:
            if case in mapping:
                out.setdefault(mapping[case], []).extend(ImageRef(case, i) for i in range(seg.shape[axis]))
            continue
        for i in range(seg.shape[axis]):
            if classes == "all":
                out.setdefault("all", []).append(ImageRef(case, i))
                continue
            plane = take_slice(seg[None], axis, i)
            if ignore is not None and np.any(plane == ignore):
                continue
            values = set(np.unique(plane).astype(int).tolist())
            present = [n for n, vals in foreground.items() if values & set(vals)]
            out.setdefault(_mask_class(present, mask_label), []).append(ImageRef(case, i))
    if not out:
        raise UserError(f"--classes {classes}: no image of {name} received a class (are all cases unlabeled?).")
    return dict(sorted(out.items()))
