"""Evaluate folders of predictions against folders of reference segmentations, and trained nnU-Net model folders.

Results are plain, JSON-ready dictionaries so that they can be cached, merged and handed to the report builder::

    CaseMetrics = {class_name: {metric_name: value}}      # one case; classes named as in dataset.json
    FoldMetrics = {case_id: CaseMetrics}                  # one folder of predictions (a fold, a test set)

Cases whose reference is nothing but the ignore label (the unlabeled cases of a semi-supervised dataset) carry no
ground truth and are left out. Voxels with the ignore label are excluded from every metric, as nnU-Net does for Dice.
"""
from __future__ import annotations

import json
import multiprocessing
import re
import statistics
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import compute_metrics, region_or_label_to_mask
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.metrics import (
    DEFAULT_NSD_TOLERANCE_MM,
    MODES,
    drop_singleton_axes,
    ssl4mis_metrics,
    surface_metrics,
)

CaseMetrics = dict[str, dict[str, float]]
FoldMetrics = dict[str, CaseMetrics]
LabelOrRegion = int | tuple[int, ...]


def load_dataset_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: the dataset.json of the predictions' dataset is needed for its "
                        f"labels and file ending.")
    with open(path) as f:
        return json.load(f)


def label_classes(dataset_json: dict) -> dict[str, LabelOrRegion]:
    """Foreground classes (labels, or regions for region-based datasets) by name, as nnU-Net evaluates them."""
    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    wanted = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    by_value = {_as_label_or_region(value): name for name, value in dataset_json["labels"].items() if name != "ignore"}
    return {by_value[_as_label_or_region(value)]: _as_label_or_region(value) for value in wanted}


def _as_label_or_region(value) -> LabelOrRegion:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) if len(value) > 1 else int(value[0])
    return int(value)


def allowed_values(dataset_json: dict) -> set[int]:
    """The values a segmentation file of the dataset may hold: its labels (for region-based datasets the values of
    ``regions_class_order``), background and the ignore label."""
    if "regions_class_order" in dataset_json:
        values = {0, *(int(v) for v in dataset_json["regions_class_order"])}
    else:
        values = {int(v) for name, v in dataset_json["labels"].items() if not isinstance(v, (list, tuple))}
    ignore = ignore_label(dataset_json)
    return values | ({ignore} if ignore is not None else set())


def _check_values(file, seg: np.ndarray, allowed: set[int]) -> None:
    unexpected = sorted(int(v) for v in np.unique(seg) if int(v) not in allowed)
    if unexpected:
        raise UserError(f"{file} holds label values {unexpected} that dataset.json does not define (allowed: "
                        f"{sorted(allowed)}); they would be ignored silently. Check that the file belongs to this "
                        f"dataset, or fix its labels.")


def ignore_label(dataset_json: dict) -> int | None:
    value = dataset_json["labels"].get("ignore")
    return None if value is None else int(value)


def list_cases(folder: str | Path, file_ending: str) -> dict[str, Path]:
    """``{case_id: file}`` for the segmentation files directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"Folder {folder} does not exist.")
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.name.endswith(file_ending) and not p.name.startswith(".")}


def reader_writer_for(dataset_json: dict, example_file: str | Path) -> BaseReaderWriter:
    return determine_reader_writer_from_dataset_json(dataset_json, str(example_file),
                                                     allow_nonmatching_filename=True, verbose=False)()


def evaluate_case(reference_file: str | Path, prediction_file: str | Path, reader_writer: BaseReaderWriter,
                  classes: Mapping[str, LabelOrRegion], ignore: int | None = None, mode: str = "nnunet",
                  nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                  allowed: set[int] | None = None) -> CaseMetrics | None:
    """Metrics of one case per class (see :mod:`nnunet_semi.evaluation.metrics`); ``None`` for an unlabeled case.
    With ``allowed`` (:func:`allowed_values`), a file holding other values stops the evaluation."""
    seg_ref, ref_properties = reader_writer.read_seg(str(reference_file))
    seg_pred, pred_properties = reader_writer.read_seg(str(prediction_file))
    _check_same_geometry(reference_file, prediction_file, seg_ref, seg_pred, ref_properties, pred_properties)
    if allowed is not None:
        _check_values(reference_file, seg_ref, allowed)
        _check_values(prediction_file, seg_pred, allowed)
    if ignore is not None and np.all(seg_ref == ignore):
        return None
    ignore_mask = seg_ref[0] == ignore if ignore is not None else np.zeros(seg_ref.shape[1:], dtype=bool)
    overlap = (_nnunet_dice_and_iou(reference_file, prediction_file, reader_writer, classes, ignore)
               if mode == "nnunet" else {})
    results: CaseMetrics = {}
    for name, label in classes.items():
        ref = region_or_label_to_mask(seg_ref[0], label) & ~ignore_mask
        pred = region_or_label_to_mask(seg_pred[0], label) & ~ignore_mask
        ref, pred, spacing = drop_singleton_axes(ref, pred, ref_properties["spacing"])
        results[name] = ({**overlap[name], **surface_metrics(pred, ref, spacing, nsd_tolerance_mm)}
                         if mode == "nnunet" else ssl4mis_metrics(pred, ref))
    return results


def _nnunet_dice_and_iou(reference_file, prediction_file, reader_writer: BaseReaderWriter,
                         classes: Mapping[str, LabelOrRegion], ignore: int | None) -> CaseMetrics:
    """Dice and IoU per class from nnU-Net's own evaluator: the numbers nnU-Net prints in summary.json."""
    metrics = compute_metrics(str(reference_file), str(prediction_file), reader_writer, list(classes.values()),
                              ignore)["metrics"]
    return {name: {"Dice": float(metrics[label]["Dice"]), "IoU": float(metrics[label]["IoU"])}
            for name, label in classes.items()}


def _check_same_geometry(reference_file, prediction_file, seg_ref: np.ndarray, seg_pred: np.ndarray,
                         ref_properties: dict, pred_properties: dict) -> None:
    if seg_ref.shape != seg_pred.shape:
        raise UserError(f"Prediction {prediction_file} has shape {seg_pred.shape[1:]} but its reference "
                        f"{reference_file} has {seg_ref.shape[1:]}: predictions must be exported in the geometry "
                        f"of the reference (nnU-Net's predictors do this).")
    if not np.allclose(ref_properties["spacing"], pred_properties["spacing"], rtol=1e-3):
        raise UserError(f"Prediction {prediction_file} has spacing {tuple(pred_properties['spacing'])} but its "
                        f"reference {reference_file} has {tuple(ref_properties['spacing'])}.")


def evaluate_folder(reference_folder: str | Path, prediction_folder: str | Path, dataset_json: dict, *,
                    mode: str = "nnunet", nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                    expected_cases: Collection[str] | None = None, num_processes: int = 1,
                    progress: str | None = None) -> FoldMetrics:
    """Evaluate every prediction in ``prediction_folder`` against the file of the same name in ``reference_folder``.

    Every prediction needs a reference. With ``expected_cases`` (a fold's validation cases, or all reference cases
    of a test set) the predictions must be exactly those cases. ``progress`` is the label of the progress bar.
    """
    if mode not in MODES:
        raise UserError(f"Unknown metric mode '{mode}': choose one of {', '.join(MODES)}.")
    ending = dataset_json["file_ending"]
    predictions = list_cases(prediction_folder, ending)
    references = list_cases(reference_folder, ending)
    _check_cases(predictions, references, expected_cases, prediction_folder, reference_folder, ending)
    rw = reader_writer_for(dataset_json, next(iter(predictions.values())))
    work = partial(_evaluate_pair, reader_writer=rw, classes=label_classes(dataset_json),
                   ignore=ignore_label(dataset_json), mode=mode, nsd_tolerance_mm=nsd_tolerance_mm,
                   allowed=allowed_values(dataset_json))
    pairs = [(case, references[case], predictions[case]) for case in predictions]
    results = tqdm(_map(work, pairs, num_processes), total=len(pairs), desc=progress or str(prediction_folder),
                   unit="case", disable=None)
    return {case: metrics for case, metrics in results if metrics is not None}


def evaluate_test_set(labels_folder: str | Path, prediction_folder: str | Path, dataset_json: dict, *,
                      mode: str = "nnunet", nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                      num_processes: int = 1, progress: str | None = None) -> FoldMetrics:
    """Evaluate held-out predictions (e.g. of ``imagesTs``) against ``labels_folder`` (e.g. ``labelsTs``): both
    must hold exactly the same cases."""
    expected = list(list_cases(labels_folder, dataset_json["file_ending"]))
    return evaluate_folder(labels_folder, prediction_folder, dataset_json, mode=mode, nsd_tolerance_mm=nsd_tolerance_mm,
                           expected_cases=expected, num_processes=num_processes, progress=progress)


def _check_cases(predictions: Mapping[str, Path], references: Mapping[str, Path],
                 expected_cases: Collection[str] | None, prediction_folder, reference_folder, ending: str) -> None:
    if not predictions:
        raise UserError(f"{prediction_folder} holds no predictions ending in '{ending}'.")
    without_reference = sorted(set(predictions) - set(references))
    if without_reference:
        raise UserError(f"{len(without_reference)} prediction(s) in {prediction_folder} have no reference in "
                        f"{reference_folder}: {_few(without_reference)}. Check that the reference folder belongs "
                        f"to the same dataset (labelsTs for a test set, gt_segmentations for validation).")
    if expected_cases is not None:
        missing = sorted(set(expected_cases) - set(predictions))
        extra = sorted(set(predictions) - set(expected_cases))
        if missing or extra:
            raise UserError(f"The predictions in {prediction_folder} do not match the expected cases: missing "
                            f"{_few(missing) or 'none'}, unexpected {_few(extra) or 'none'}.")


def _few(items: Sequence[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _evaluate_pair(pair: tuple[str, Path, Path], **kwargs) -> tuple[str, CaseMetrics | None]:
    case, reference, prediction = pair
    return case, evaluate_case(reference, prediction, **kwargs)


# what a spawned worker spends importing nnU-Net, torch and MONAI before its first case (5-15 s on 2 CPU cores)
WORKER_STARTUP_S = 10.0


def _map(function, items: list, num_processes: int) -> Iterator:
    """``map`` in this process, or in a pool of spawned workers (nnU-Net's choice; safe next to torch) when that
    pays: the first item is timed here, and the pool is started only if running the rest in parallel saves more
    than a worker's start-up (a handful of 2D cases is faster in-process than any pool)."""
    if not items:
        return
    start = time.perf_counter()
    first = function(items[0])
    serial_s = (time.perf_counter() - start) * (len(items) - 1)
    yield first
    workers = min(num_processes, len(items) - 1)
    if workers <= 1 or serial_s * (1 - 1 / workers) <= WORKER_STARTUP_S:
        yield from map(function, items[1:])
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(function, items[1:])


# ----------------------------------------------------------------------------------------------------------------
# Trained model folders: $nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<configuration>/fold_N/validation
# ----------------------------------------------------------------------------------------------------------------

def is_model_folder(folder: str | Path) -> bool:
    """A trained nnU-Net model folder (``Trainer__Plans__configuration`` with ``fold_*`` subfolders)."""
    folder = Path(folder)
    return folder.name.count("__") == 2 and any(folder.glob("fold_*"))


def model_folder_folds(model_folder: str | Path) -> list[int | str]:
    """Folds that have a validation folder, in order (``'all'`` last)."""
    folds = [p.parent.name[len("fold_"):] for p in Path(model_folder).glob("fold_*/validation")]
    return sorted((int(f) if f.isdigit() else f for f in folds), key=lambda f: (isinstance(f, str), str(f).zfill(4)))


def default_reference_folder(model_folder: str | Path) -> Path:
    """``$nnUNet_preprocessed/<dataset>/gt_segmentations``, where nnU-Net keeps the references of its validation."""
    if not nnUNet_preprocessed.is_set():
        raise UserError("nnUNet_preprocessed is not set: export it, or give the reference folder (-r).")
    return Path(nnUNet_preprocessed.get()) / Path(model_folder).resolve().parent.name / "gt_segmentations"


def validation_cases(model_folder: str | Path, fold: int | str) -> list[str] | None:
    """The validation cases of ``fold`` from ``splits_final.json``; ``None`` when they cannot be known."""
    if str(fold) == "all" or not nnUNet_preprocessed.is_set():
        return None
    splits_file = Path(nnUNet_preprocessed.get()) / Path(model_folder).resolve().parent.name / "splits_final.json"
    if not splits_file.is_file():
        return None
    with open(splits_file) as f:
        splits = json.load(f)
    if not 0 <= int(fold) < len(splits):
        raise UserError(f"Fold {fold} does not exist: {splits_file} defines folds 0..{len(splits) - 1}.")
    return list(splits[int(fold)]["val"])


def evaluate_cross_validation(model_folder: str | Path, folds: Sequence[int | str] | None = None, *,
                              reference_folder: str | Path | None = None, mode: str = "nnunet",
                              nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM, num_processes: int = 1,
                              name: str | None = None) -> dict[int | str, FoldMetrics]:
    """Evaluate nnU-Net's validation predictions of each fold of a trained model folder.

    Returns ``{fold: FoldMetrics}``. ``folds`` defaults to every fold with a validation folder; a requested fold
    that was not trained, whose validation has not finished (no ``summary.json``), or whose validation misses cases
    of ``splits_final.json``, is an error.
    """
    model_folder = Path(model_folder)
    dataset_json = load_dataset_json(model_folder / "dataset.json")
    folds = list(folds) if folds is not None else model_folder_folds(model_folder)
    if not folds:
        raise UserError(f"{model_folder} has no fold_*/validation folder: train and validate it first "
                        f"(nnUNetv2_train ... --val to only validate).")
    reference_folder = Path(reference_folder) if reference_folder else default_reference_folder(model_folder)
    results = {}
    for fold in folds:
        validation = model_folder / f"fold_{fold}" / "validation"
        if not validation.is_dir():
            raise UserError(f"Fold {fold} of {model_folder} has no validation predictions ({validation} is "
                            f"missing): train it, or run nnUNetv2_train with --val.")
        if not (validation / "summary.json").is_file():  # nnU-Net writes it once every prediction is exported
            raise UserError(f"The validation of fold {fold} of {model_folder} is incomplete or still running "
                            f"({validation / 'summary.json'} is missing): let it finish, or rerun it with "
                            f"nnUNetv2_train ... --val.")
        results[fold] = evaluate_folder(reference_folder, validation, dataset_json, mode=mode,
                                        nsd_tolerance_mm=nsd_tolerance_mm,
                                        expected_cases=validation_cases(model_folder, fold),
                                        num_processes=num_processes,
                                        progress=f"{name or model_folder.name} fold {fold}")
    return results


EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


def seconds_per_iteration(model_folder: str | Path, folds: Sequence[int | str]) -> float | None:
    """Median wall time of a training epoch divided by its training iterations, from nnU-Net's logs.

    The epoch time nnU-Net logs includes its short per-epoch validation, so this slightly overestimates the time of
    a training iteration alike for every trainer; the first epoch (warm-up) is skipped. ``None`` without logs.
    """
    per_iteration = []
    for fold in folds:
        fold_folder = Path(model_folder) / f"fold_{fold}"
        iterations = _trainer_setting(fold_folder, "num_iterations_per_epoch")
        times = [float(t) for log in sorted(fold_folder.glob("training_log_*.txt"))
                 for t in EPOCH_TIME.findall(log.read_text(errors="replace"))]
        if iterations and times:
            per_iteration += [t / iterations for t in (times[1:] or times)]
    return statistics.median(per_iteration) if per_iteration else None


def training_schedule(model_folder: str | Path, folds: Sequence[int | str]) -> tuple[int, int] | None:
    """(epochs, iterations per epoch) the trainer was configured with, from the first fold's ``debug.json``."""
    for fold in folds:
        fold_folder = Path(model_folder) / f"fold_{fold}"
        epochs, iterations = (_trainer_setting(fold_folder, key) for key in ("num_epochs", "num_iterations_per_epoch"))
        if epochs and iterations:
            return epochs, iterations
    return None


def _trainer_setting(fold_folder: Path, key: str) -> int | None:
    """An integer attribute of the trainer, as nnU-Net records them (as strings) in ``debug.json``."""
    debug_json = fold_folder / "debug.json"
    if not debug_json.is_file():
        return None
    with open(debug_json) as f:
        value = json.load(f).get(key)
    return int(value) if value is not None else None
