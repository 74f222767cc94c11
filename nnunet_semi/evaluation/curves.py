"""Learning curves: the held-out test Dice of weight snapshots taken every K epochs, for the student and the EMA
teacher (``nnunet-semi benchmark --curve-every K``; snapshots by :mod:`nnunet_semi.core.snapshots`).

Each snapshot is evaluated in process with nnU-Net's predictor (sliding window, Gaussian weighting, no test-time
mirroring) on an evenly spaced subset of the test cases, preprocessed once per model folder by nnU-Net's own
preprocessor; Dice per class is nnU-Net's (TP/FP/FN of each label or region, ignore voxels excluded, NaN when the
class is absent from both masks), averaged over cases, then over classes. Results are cached per fold in
``<output>/curves/<dataset>/<trainer>/fold_X.json``, so an interrupted or extended benchmark evaluates only new
snapshots.
"""
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from tqdm import tqdm

from nnunet_semi.core.snapshots import SNAPSHOT_FOLDER
from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.folders import label_classes
from nnunet_semi.files import write_atomic

SNAPSHOT_FILE = re.compile(r"epoch_(\d{4})_(student|teacher)\.pth$")


@dataclass(frozen=True)
class HeldOutCase:
    name: str
    images: tuple[str, ...]  # one file per input channel
    label: str


@dataclass(frozen=True)
class CurvePoint:
    epochs: int
    network: str  # 'student' or 'teacher'
    dice: float  # mean over classes of the mean over cases


def held_out_cases(images_folder: Path, labels_folder: Path, file_ending: str, max_cases: int | None
                   ) -> list[HeldOutCase]:
    """The labeled test cases, or an evenly spaced subset of at most ``max_cases`` of them (sorted by name), each with
    its image files ``<case>_XXXX<ending>`` (one per file channel: an RGB PNG is one file for three channels)."""
    names = sorted(p.name[: -len(file_ending)] for p in labels_folder.glob(f"*{file_ending}"))
    if max_cases is not None and len(names) > max_cases:
        names = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, max_cases).round().astype(int))]
    cases = []
    for name in names:
        images = tuple(sorted(str(p) for p in images_folder.glob(f"{name}_[0-9][0-9][0-9][0-9]{file_ending}")))
        if not images:
            raise UserError(f"{labels_folder / (name + file_ending)} has no image in {images_folder} (expected "
                            f"{name}_0000{file_ending}): restore it or remove the label.")
        cases.append(HeldOutCase(name, images, str(labels_folder / f"{name}{file_ending}")))
    return cases


def snapshot_files(fold_folder: Path) -> dict[str, Path]:
    """``{file name: path}`` of a fold's snapshots, in order of epochs (student before teacher)."""
    found = {p.name: p for p in (fold_folder / SNAPSHOT_FOLDER).glob("epoch_*.pth") if SNAPSHOT_FILE.match(p.name)}
    return dict(sorted(found.items()))


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, classes: Sequence, ignore_label: int | None
                   ) -> np.ndarray:
    """nnU-Net's Dice of each label or region: 2 TP / (2 TP + FP + FN), NaN when both masks are empty."""
    ignore = reference == ignore_label if ignore_label is not None else None
    dice = []
    for region in classes:
        tp, fp, fn, _ = compute_tp_fp_fn_tn(region_or_label_to_mask(reference, region),
                                            region_or_label_to_mask(prediction, region), ignore)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else np.nan)
    return np.asarray(dice, dtype=np.float64)


class SnapshotEvaluator:
    """nnU-Net's predictor for one model folder, with the test cases preprocessed once."""

    def __init__(self, model_folder: Path, fold: int, first_snapshot: str, cases: Sequence[HeldOutCase],
                 device: torch.device):
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                         perform_everything_on_device=device.type == "cuda", device=device,
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(model_folder), (fold,),
                                                            f"{SNAPSHOT_FOLDER}/{first_snapshot}")
        p = self.predictor
        self.classes = list(label_classes(p.dataset_json).values())
        self.ignore_label = p.label_manager.ignore_label
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        reader = p.plans_manager.image_reader_writer_class()
        self.cases = []
        for case in tqdm(cases, desc=f"Preprocessing test cases for {model_folder.name}", unit="case", leave=False):
            data, _, properties = preprocessor.run_case(list(case.images), None, p.plans_manager,
                                                        p.configuration_manager, p.dataset_json)
            self.cases.append((torch.from_numpy(data), properties, reader.read_seg(case.label)[0][0]))

    def mean_dice(self, snapshot: Path) -> float:
        """Dice of one snapshot: per class the mean over cases, then the mean over classes."""
        p = self.predictor
        p.list_of_parameters = [torch.load(snapshot, map_location="cpu", weights_only=False)["network_weights"]]
        per_case = []
        for data, properties, reference in self.cases:
            logits = p.predict_logits_from_preprocessed_data(data)
            prediction = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, p.plans_manager, p.configuration_manager, p.label_manager, properties)
            per_case.append(dice_per_class(prediction, reference, self.classes, self.ignore_label))
        with warnings.catch_warnings():  # a class absent from every case gives an all-NaN mean
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(np.nanmean(np.stack(per_case), axis=0)))


def evaluate_fold(model_folder: Path, fold: int, cases: Sequence[HeldOutCase], cache: Path,
                  device: torch.device, evaluator: SnapshotEvaluator | None = None
                  ) -> tuple[list[CurvePoint], SnapshotEvaluator | None]:
    """The curve of one fold: every snapshot's Dice, from ``cache`` (JSON) or evaluated now and added to it. Cached
    values count only for the same test cases and the same snapshot file (its modification time); others are
    evaluated again. Returns the points and the evaluator (reusable for the other folds of the model folder)."""
    snapshots = snapshot_files(model_folder / f"fold_{fold}")
    names = [c.name for c in cases]
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    known = stored.get("snapshots", {}) if stored.get("cases") == names else {}
    todo = [name for name, path in snapshots.items()
            if known.get(name, {}).get("modified") != path.stat().st_mtime]
    for name in tqdm(todo, desc=f"Learning curve of {model_folder.name} fold {fold}", unit="snapshot"):
        if evaluator is None:
            evaluator = SnapshotEvaluator(model_folder, fold, name, cases, device)
        known[name] = {"dice": evaluator.mean_dice(snapshots[name]), "modified": snapshots[name].stat().st_mtime}
        text = json.dumps({"cases": names, "snapshots": known}, indent=1)
        write_atomic(cache, lambda tmp: Path(tmp).write_text(text))
    points = [CurvePoint(int(m[1]), m[2], known[name]["dice"]) for name in snapshots
              if (m := SNAPSHOT_FILE.match(name))]
    return points, evaluator


def curve_table(row: str, folds: Mapping[int, Sequence[CurvePoint]], iterations_per_epoch: int) -> list[dict]:
    """CSV rows (row, network, iterations, fold, dice) of one report row's curves, ``{fold: points}``."""
    return [{"row": row, "network": p.network, "iterations": p.epochs * iterations_per_epoch, "fold": fold,
             "dice": p.dice} for fold, points in folds.items() for p in points]
