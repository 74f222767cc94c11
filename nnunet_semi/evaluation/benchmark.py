"""``nnunet-semi benchmark``: semi-supervised trainers against vanilla nnU-Net, trained and evaluated alike.

For each semi-supervised dataset made by ``make-semi`` (several give the Dice-versus-labeled-fraction plot) the rows
are: vanilla nnU-Net on the labeled-only twin (the reference), every requested semi-supervised trainer on the
semi-supervised dataset, every requested supervised trainer (nnU-Net's own variants, e.g. ``nnUNetTrainerDA5``, and
``nnUNetTrainerEMA``) on the labeled-only twin (the unlabeled cases of the semi-supervised dataset carry only the
ignore label) and, when the dataset has a fully labeled twin, vanilla nnU-Net on it (the upper bound). All
datasets must share their plans (``nnunet-semi plan`` ensures it); all share their validation folds. Trainings run
through the unmodified ``nnUNetv2_train`` (finished folds are skipped, interrupted ones resumed with ``--c``), test sets are
predicted with ``nnUNetv2_predict``, and the report is written only when everything has been evaluated.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from nnunetv2.configuration import default_num_processes
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
from tqdm import tqdm

from nnunet_semi.core.hyperparameters import budget_variant_name
from nnunet_semi.core.snapshots import SNAPSHOT_EVERY_VARIABLE
from nnunet_semi.core.time_limit import STOP_TRAINING_AT_VARIABLE, read_training_summary
from nnunet_semi.env import nnunet_environment
from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.curves import curve_table, evaluate_fold, held_out_cases
from nnunet_semi.evaluation.folders import (
    evaluate_cross_validation,
    evaluate_test_set,
    load_dataset_json,
    seconds_per_iteration,
    training_schedule,
)
from nnunet_semi.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, MODES
from nnunet_semi.evaluation.plots import plot_learning_curves
from nnunet_semi.evaluation.report import MethodResults, ReportSettings, TrainingBudget, write_report
from nnunet_semi.planners.raw import raw_root, read_manifest, resolve_dataset
from nnunet_semi.cli_text import help_text

VANILLA = "nnUNetTrainer"


@dataclass(frozen=True)
class Run:
    """One report row: a trainer on a dataset."""

    name: str
    dataset: str
    trainer: str  # with the budget suffix, as nnUNetv2_train sees it
    role: str
    labeled_fraction: float | None

    def model_folder(self, configuration: str, plans: str) -> Path:
        return Path(nnUNet_results.require()) / self.dataset / f"{self.trainer}__{plans}__{configuration}"


def labeled_fraction(manifest: dict) -> float:
    labeled, unlabeled = len(manifest["labeled_cases"]), len(manifest["unlabeled_cases"])
    return labeled / (labeled + unlabeled)


_TRAINER_NOT_FOUND = "Could not find requested nnunet trainer"  # nnU-Net's message when no trainer has the name


def resolve_trainer(name: str) -> type | None:
    """The trainer class ``nnUNetv2_train`` would use for ``name`` (ours, nnU-Net's, ``nnUNet_extTrainer``'s), or
    None when there is none."""
    from nnunet_semi.env import register_ext_trainers
    from nnunet_semi.trainers import find_trainer_class
    register_ext_trainers()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            return find_trainer_class(name)
    except RuntimeError as error:
        if str(error).startswith(_TRAINER_NOT_FOUND):
            return None
        raise  # any other failure of nnU-Net's lookup (a broken trainer module, ...) is not an unknown name


def is_supervised(trainer: str) -> bool:
    """A known trainer that never reads unlabeled cases: not one of our semi-supervised ones, or one of ours that
    declares so (``reads_unlabeled_cases = False``, e.g. ``nnUNetTrainerEMA``)."""
    from nnunet_semi.core.trainer import nnUNetTrainerSemi
    found = resolve_trainer(trainer)
    return found is not None and (not issubclass(found, nnUNetTrainerSemi) or not found.reads_unlabeled_cases)


def benchmark_runs(semi_datasets: list[str], trainers: list[str], budget: TrainingBudget | None,
                   with_upper_bound: bool = True) -> list[Run]:
    """The rows for every semi-supervised dataset; the upper bound once (the first full twin found), if wanted.
    Supervised trainers train on the labeled-only twin; vanilla nnU-Net among ``trainers`` is the reference row."""
    def with_budget(trainer: str) -> str:
        return budget_variant_name(trainer, budget.epochs, budget.iterations_per_epoch) if budget else trainer

    runs, upper_bound = [], None
    for semi in semi_datasets:
        manifest = read_manifest(semi) or {}
        if manifest.get("role") != "semi":
            raise UserError(f"{semi} was not made by 'nnunet-semi make-semi': its labeled-only twin is unknown.")
        fraction = labeled_fraction(manifest)
        labeled_twin = resolve_dataset(manifest["labeled_twin"])
        runs.append(Run("nnU-Net (labeled only)", labeled_twin, with_budget(VANILLA), "reference", fraction))
        runs += [Run(t, labeled_twin if is_supervised(t) else semi, with_budget(t), "method", fraction)
                 for t in trainers if t != VANILLA]
        if with_upper_bound and upper_bound is None and manifest.get("full_twin"):
            upper_bound = Run("nnU-Net (all labels)", resolve_dataset(manifest["full_twin"]), with_budget(VANILLA),
                              "upper_bound", None)
    return runs + ([upper_bound] if upper_bound else [])


def _plans_without_name(dataset: str, plans: str) -> dict:
    path = Path(nnUNet_preprocessed.require()) / dataset / f"{plans}.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: run 'nnunet-semi plan' for the semi-supervised dataset first.")
    content = json.loads(path.read_text())
    content.pop("dataset_name", None)
    return content


def check_trainers_and_configuration(runs: list[Run], configuration: str, plans: str) -> None:
    """Resolve every trainer through nnU-Net's own lookup (with our trainer folder) and check that the plans define
    the configuration, before anything trains."""
    for run in runs:
        if resolve_trainer(run.trainer) is None:
            raise UserError(f"Unknown trainer '{run.trainer}': nnUNetv2_train would not find it in nnU-Net's "
                            f"trainers, ours or the folders of nnUNet_extTrainer.")
    available = sorted(_plans_without_name(runs[0].dataset, plans)["configurations"])
    if configuration not in available:
        raise UserError(f"Configuration '{configuration}' is not in plans '{plans}' of {runs[0].dataset}; "
                        f"available: {', '.join(available)}.")


def check_same_plans_and_folds(runs: list[Run], plans: str, folds: list[int]) -> None:
    """All compared datasets must use identical plans and define the requested folds."""
    datasets = sorted({r.dataset for r in runs})
    reference = _plans_without_name(datasets[0], plans)
    for dataset in datasets[1:]:
        if _plans_without_name(dataset, plans) != reference:
            raise UserError(f"Plans '{plans}' of {dataset} differ from those of {datasets[0]}: the comparison would "
                            f"not be fair. Plan all of them with 'nnunet-semi plan'.")
    for dataset in datasets:
        splits = Path(nnUNet_preprocessed.require()) / dataset / "splits_final.json"
        available = len(json.loads(splits.read_text())) if splits.is_file() else 0
        missing = [f for f in folds if not 0 <= f < available]
        if missing:
            raise UserError(f"Folds {missing} do not exist for {dataset} ({splits} defines {available} folds).")


def is_finished(run: Run, configuration: str, plans: str, fold: int, time_limited: bool = False) -> bool:
    """Final checkpoint and validation exist; a training that a time limit stopped counts only under a time limit
    (otherwise ``--c`` continues it to the full budget)."""
    fold_folder = run.model_folder(configuration, plans) / f"fold_{fold}"
    complete = (fold_folder / "checkpoint_final.pth").is_file() and \
        (fold_folder / "validation" / "summary.json").is_file()
    stopped_early = (read_training_summary(fold_folder) or {}).get("stopped_at_time_limit", False)
    return complete and (time_limited or not stopped_early)


_EPOCH_LINE = re.compile(r"Epoch (\d+)$")


def _run_logged(command: list[str], log: Path, epochs: tqdm | None = None,
                extra_environment: dict | None = None) -> None:
    """Run an nnU-Net command with its output in ``log``; ``epochs`` (a progress bar) advances with nnU-Net's
    "Epoch N" lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(" ".join(command) + "\n")
        f.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**nnunet_environment(), **(extra_environment or {})})
        for line in process.stdout:
            f.write(line)
            match = _EPOCH_LINE.search(line.rstrip())
            if epochs is not None and match:
                epochs.n = int(match[1]) + 1  # the epoch that runs now, counted from 1
                epochs.refresh()
        returncode = process.wait()
    if returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {returncode}); see {log}")


def train_missing(runs: list[Run], configuration: str, plans: str, folds: list[int], device: str,
                  logs: Path, no_train: bool, budget: TrainingBudget | None = None,
                  stop_at: float | None = None, snapshot_every: int | None = None) -> None:
    """Train (or resume) every fold that has no final checkpoint and validation yet. With ``stop_at`` (unix
    seconds), each training in turn gets an equal share of the time left as its deadline; with ``snapshot_every``
    (epochs), trainings write weight snapshots for the learning curves."""
    todo = [(r, f) for f in folds for r in runs
            if not is_finished(r, configuration, plans, f, time_limited=stop_at is not None)]  # fold by fold
    if todo and no_train:
        listing = ", ".join(f"{r.trainer} on {r.dataset} fold {f}" for r, f in todo[:6])
        raise UserError(f"--no-train given but {len(todo)} trainings are missing or unfinished: {listing}...")
    for index, (run, fold) in enumerate(todo, 1):
        fold_folder = run.model_folder(configuration, plans) / f"fold_{fold}"
        resume = ["--c"] if any(fold_folder.glob("checkpoint_*.pth")) else []
        description = f"[{index}/{len(todo)}] {run.trainer} on {run.dataset} fold {fold}"
        environment = {} if stop_at is None else {
            STOP_TRAINING_AT_VARIABLE: str(time.time() + max(0.0, stop_at - time.time()) / (len(todo) - index + 1))}
        environment[SNAPSHOT_EVERY_VARIABLE] = str(snapshot_every or "")  # also overrides the user's shell
        with tqdm(total=budget.epochs if budget else None, desc=description, unit="epoch") as epochs:
            _run_logged(["nnUNetv2_train", str(convert_dataset_name_to_id(run.dataset)), configuration, str(fold),
                         "-tr", run.trainer, "-p", plans, "-device", device, *resume],
                        logs / f"train_{run.trainer}_{run.dataset}_fold{fold}.log", epochs, environment)


def predictor_workers(device: str) -> list[str]:
    """nnUNetv2_predict's preprocessing / export workers: none on the CPU, where the network already uses every
    core and each spawned worker costs seconds of imports (``-npp 0 -nps 0`` is nnU-Net's sequential mode); one
    each next to an accelerator, to overlap them with the network."""
    return ["-npp", "0", "-nps", "0"] if device == "cpu" else ["-npp", "1", "-nps", "1"]


def test_predictions_folder(output: Path, run: Run, fold: int, tta: bool, postprocessed: bool = False) -> Path:
    """Where the benchmark keeps one fold's test predictions: without mirroring and after nnU-Net's postprocessing
    in folders of their own."""
    name = "test_predictions" + ("" if tta else "_no_tta") + ("_postprocessed" if postprocessed else "")
    return output / name / run.dataset / run.trainer / f"fold_{fold}"


def _is_up_to_date(folder: Path, test_images: Path, ending: str, sources: list[Path]) -> bool:
    """``folder`` holds every test case, each written after every one of ``sources`` (the checkpoint or rules it
    derives from): outputs of an earlier training, or of rules determined since, are made again."""
    expected = [folder / (p.name[: -len(ending) - 5] + ending) for p in test_images.glob(f"*_0000{ending}")]
    if not all(p.is_file() for p in expected):
        return False
    newest_source = max((s.stat().st_mtime_ns for s in sources), default=0)
    return all(p.stat().st_mtime_ns >= newest_source for p in expected)


def predict_test_set(run: Run, configuration: str, plans: str, fold: int, test_images: Path, ending: str,
                     output: Path, device: str, logs: Path, tta: bool = True) -> Path:
    """``nnUNetv2_predict`` of one fold's model (with nnU-Net's mirroring unless ``tta`` is False), skipped when
    every test case has been predicted since the fold's final checkpoint was written. Predictions without mirroring
    go to their own folder."""
    folder = test_predictions_folder(output, run, fold, tta)
    checkpoint = run.model_folder(configuration, plans) / f"fold_{fold}" / "checkpoint_final.pth"
    if _is_up_to_date(folder, test_images, ending, [checkpoint]):
        return folder
    _run_logged(["nnUNetv2_predict", "-i", str(test_images), "-o", str(folder), "-d", run.dataset, "-c",
                 configuration, "-f", str(fold), "-tr", run.trainer, "-p", plans, "-device", device,
                 *predictor_workers(device), *([] if tta else ["--disable_tta"])],
                logs / f"predict_{run.trainer}_{run.dataset}_fold{fold}.log")
    return folder


def postprocess_test_set(run: Run, configuration: str, plans: str, fold: int, predictions: Path, test_images: Path,
                         ending: str, output: Path, logs: Path, tta: bool = True) -> Path:
    """nnU-Net's postprocessing of one fold's test ``predictions``, as ``nnUNetv2_find_best_configuration`` decides
    it for a model: ``nnUNetv2_determine_postprocessing`` on the fold's own validation predictions (keep only the
    largest component of the foreground, then of each class, wherever that raises their Dice; written to
    ``fold_X/validation/postprocessing.pkl``), then ``nnUNetv2_apply_postprocessing`` to the test predictions.
    Both steps are skipped when their results exist and are newer than what they derive from (the validation,
    the rules and the test predictions)."""
    model = run.model_folder(configuration, plans)
    validation = model / f"fold_{fold}" / "validation"
    rules = validation / "postprocessing.pkl"
    metadata = ["-plans_json", str(model / "plans.json"), "-dataset_json", str(model / "dataset.json"),
                "-np", str(default_num_processes)]
    summary = validation / "summary.json"
    if not summary.is_file():
        raise UserError(f"{validation} has no nnU-Net validation (summary.json), from which postprocessing is "
                        f"determined; run nnUNetv2_train ... --val for that fold, or leave out --postprocess.")
    if not rules.is_file() or rules.stat().st_mtime_ns < summary.stat().st_mtime_ns:
        reference = Path(nnUNet_preprocessed.require()) / run.dataset / "gt_segmentations"
        _run_logged(["nnUNetv2_determine_postprocessing", "-i", str(validation), "-ref", str(reference),
                     *metadata, "--remove_postprocessed"],
                    logs / f"postprocessing_{run.trainer}_{run.dataset}_fold{fold}.log")
    folder = test_predictions_folder(output, run, fold, tta, postprocessed=True)
    if not _is_up_to_date(folder, test_images, ending, [rules, *predictions.glob(f"*{ending}")]):
        _run_logged(["nnUNetv2_apply_postprocessing", "-i", str(predictions), "-o", str(folder), "-pp_pkl_file",
                     str(rules), *metadata],
                    logs / f"postprocessing_{run.trainer}_{run.dataset}_fold{fold}.log")
    return folder


def learning_curves(runs: list[Run], configuration: str, plans: str, folds: list[int],
                    test_sets: dict[str, tuple[Path, Path] | None], output: Path, device: str,
                    max_cases: int | None) -> list[Path]:
    """Evaluate every fold's weight snapshots on the test set (see :mod:`nnunet_semi.evaluation.curves`) and write
    ``learning_curves.csv`` and ``learning_curves.png``; returns them (nothing when no fold has snapshots)."""
    rows, roles, several = [], {}, len({semi_dataset_of(r) for r in runs if r.role == "method"}) > 1
    for run in runs:
        test_set = test_sets.get(semi_dataset_of(run))
        model_folder = run.model_folder(configuration, plans)
        schedule = training_schedule(model_folder, folds)
        if test_set is None or schedule is None:
            continue
        dataset_json = load_dataset_json(raw_root() / run.dataset / "dataset.json")
        cases = held_out_cases(*test_set, dataset_json["file_ending"], max_cases)
        label = f"{run.name} ({run.dataset})" if several else run.name
        evaluator, per_fold = None, {}
        for fold in folds:
            cache = output / "curves" / run.dataset / run.trainer / f"fold_{fold}.json"
            per_fold[fold], evaluator = evaluate_fold(model_folder, fold, cases, cache, torch.device(device),
                                                      evaluator)
        new_rows = curve_table(label, per_fold, schedule[1])
        if new_rows:
            rows += new_rows
            roles[label] = run.role
    if not rows:
        return []
    table, plot = output / "learning_curves.csv", output / "learning_curves.png"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_learning_curves(rows, roles, f"training iterations (test Dice of at most {max_cases} test cases, "
                         f"no mirroring)" if max_cases else "training iterations (test Dice, no mirroring)", plot)
    return [table, plot]


def default_curve_every(budget: TrainingBudget | None, points: int = 8) -> int:
    """Snapshots every ``epochs / points`` epochs (rounded up): about ``points`` points per curve."""
    return math.ceil((budget.epochs if budget else 1000) / points)


def test_set_of(semi: str) -> tuple[Path, Path] | None:
    """(imagesTs, labelsTs) of a semi-supervised dataset, when it has labeled test cases."""
    folder = raw_root() / semi
    if (folder / "labelsTs").is_dir() and any((folder / "labelsTs").iterdir()):
        return folder / "imagesTs", folder / "labelsTs"
    return None


def run_benchmark(semi_datasets: list[str | int], trainers: list[str], configuration: str, folds: list[int],
                  output: str | Path, budget: TrainingBudget | None = None, plans: str = "nnUNetPlans",
                  device: str | None = None, mode: str = "nnunet", nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                  use_test_set: bool = True, no_train: bool = False, title: str | None = None,
                  with_upper_bound: bool = True, test_time_mirroring: bool = True,
                  time_limit_minutes: float | None = None, curve_every: int | None = None,
                  curve_cases: int | None = 50, postprocess: bool = False):
    """Train what is missing, evaluate cross-validation (and test set), write the report and the learning curves;
    returns the report's files and the curves' files. ``time_limit_minutes`` bounds the wall time of all trainings
    (see :func:`train_missing`); ``curve_every`` (epochs; default about 8 points per training, 0: none) sets the
    snapshots of the learning curves, evaluated on at most ``curve_cases`` test cases. ``postprocess`` evaluates
    the test set after nnU-Net's postprocessing (:func:`postprocess_test_set`)."""
    if time_limit_minutes is not None and (budget is None or time_limit_minutes <= 0):
        raise UserError("--time-limit needs a positive number of minutes and --budget (the budget variants are the "
                        "trainers that stop at the limit).")
    stop_at = None if time_limit_minutes is None else time.time() + 60 * time_limit_minutes
    semi_datasets = [resolve_dataset(d) for d in semi_datasets]
    output = Path(output)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    runs = benchmark_runs(semi_datasets, trainers, budget, with_upper_bound)
    check_same_plans_and_folds(runs, plans, folds)
    check_trainers_and_configuration(runs, configuration, plans)
    logs = output / "logs"
    curve_every = default_curve_every(budget) if curve_every is None else curve_every
    if curve_every < 0 or (curve_cases is not None and curve_cases < 0):
        raise UserError("--curve-every and --curve-cases must be >= 0 (0: no curves, or all test cases).")
    test_sets = {semi: test_set_of(semi) for semi in semi_datasets} if use_test_set else {}
    if curve_every and not (budget and any(test_sets.values())):
        print("No learning curves: they need --budget (the budget variants write snapshots) and a test set.")
        curve_every = 0
    train_missing(runs, configuration, plans, folds, device, logs, no_train, budget, stop_at, curve_every)

    results = []
    for run in tqdm(runs, desc="Evaluating", unit="row"):
        model_folder = run.model_folder(configuration, plans)
        result = MethodResults(
            name=run.name, role=run.role, labeled_fraction=run.labeled_fraction, budget=budget,
            cv=evaluate_cross_validation(model_folder, folds, mode=mode, nsd_tolerance_mm=nsd_tolerance_mm,
                                         name=f"{run.name} ({run.dataset})"),
            seconds_per_iteration=seconds_per_iteration(model_folder, folds),
            training={f: s for f in folds if (s := read_training_summary(model_folder / f"fold_{f}"))})
        test_set = test_sets.get(semi_dataset_of(run))
        if test_set is not None:
            images, labels = test_set
            dataset_json = load_dataset_json(raw_root() / run.dataset / "dataset.json")
            ending = dataset_json["file_ending"]
            result.test = {}
            for fold in folds:
                predictions = predict_test_set(run, configuration, plans, fold, images, ending, output, device, logs,
                                               test_time_mirroring)
                if postprocess:
                    predictions = postprocess_test_set(run, configuration, plans, fold, predictions, images, ending,
                                                       output, logs, test_time_mirroring)
                result.test[fold] = evaluate_test_set(labels, predictions, dataset_json, mode=mode,
                                                      nsd_tolerance_mm=nsd_tolerance_mm)
        results.append(result)
    details = {"datasets": ", ".join(semi_datasets), "configuration": configuration, "plans": plans,
               "folds": ", ".join(map(str, folds)), "device": device,
               "training budget": (str(budget) if budget else "nnU-Net's own (1000 epochs x 250 iterations)")
               + (f", time limit {time_limit_minutes:g} min for all trainings" if time_limit_minutes else ""),
               "test set": "imagesTs/labelsTs of the semi-supervised dataset, predicted by each fold's model"
               + ("" if test_time_mirroring else " without test-time mirroring")
               + (", then nnU-Net's postprocessing determined on that fold's validation cases" if postprocess
                  else "") if test_sets and any(test_sets.values()) else "none"}
    files = write_report(results, output, ReportSettings(title=title or f"Benchmark: {semi_datasets[0]}",
                                                        mode=mode, nsd_tolerance_mm=nsd_tolerance_mm,
                                                        details=details))
    curves = learning_curves(runs, configuration, plans, folds, test_sets, output, device, curve_cases) \
        if curve_every else []
    return files, curves


def semi_dataset_of(run: Run) -> str:
    """The semi-supervised dataset a row belongs to: its own dataset, or the semi twin of a twin."""
    manifest = read_manifest(run.dataset) or {}
    return resolve_dataset(manifest["semi"]) if "semi" in manifest else run.dataset


def parse_budget(text: str | None) -> TrainingBudget | None:
    """'20x50' -> 20 epochs x 50 iterations."""
    if text is None:
        return None
    try:
        epochs, iterations = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--budget must look like EPOCHSxITERATIONS, e.g. 20x50; got '{text}'.") from None
    if epochs < 1 or iterations < 1:
        raise UserError("--budget needs at least one epoch and one iteration per epoch.")
    return TrainingBudget(epochs, iterations)


def _run(args: argparse.Namespace) -> int:
    files, curves = run_benchmark(args.datasets, args.trainers, args.configuration, args.folds, args.output,
                          parse_budget(args.budget), args.plans, args.device, args.metrics, args.nsd_tolerance,
                          not args.no_test, args.no_train, args.title, not args.no_upper_bound,
                          not args.disable_tta, args.time_limit, args.curve_every, args.curve_cases or None,
                          args.postprocess)
    print(files.markdown.read_text())
    print(f"Report: {files.markdown}, {files.csv}, {', '.join(str(p) for p in files.plots)}")
    if curves:
        print(f"Learning curves: {', '.join(map(str, curves))}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("benchmark", help="train (or resume) and compare trainers with vanilla nnU-Net",
                                   description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="semi-supervised datasets made by make-semi (id or name); "
                                                    "several give the Dice-versus-labeled-fraction plot")
    parser.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
    parser.add_argument("-tr", "--trainers", nargs="+", default=["nnUNetTrainerMeanTeacher"],
                        help="trainers to compare with vanilla nnU-Net (default: Mean Teacher); supervised ones "
                             "(e.g. nnUNetTrainerDA5, nnUNetTrainerEMA) train on the labeled-only twin, vanilla is "
                             "always the reference")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="cross-validation folds; each fold's model also predicts the test set (default 0-4)")
    parser.add_argument("-o", "--output", required=True, help="report folder (also holds logs and test predictions)")
    parser.add_argument("--budget", help="same budget for every trainer: EPOCHSxITERATIONS, e.g. 20x50")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-device", "--device", choices=("cuda", "cpu", "mps"), help="default: cuda if available")
    parser.add_argument("--metrics", choices=MODES, default="nnunet",
                        help="nnunet: nnU-Net Dice/IoU + MONAI distances in mm; ssl4mis: the SSL4MIS/BCP protocol")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                        help=f"tolerance of the normalised surface Dice (default {DEFAULT_NSD_TOLERANCE_MM:g} mm)")
    parser.add_argument("--no-test", action="store_true", help="skip the held-out test set")
    parser.add_argument("--no-train", action="store_true", help="only evaluate; fail if a training is missing")
    parser.add_argument("--no-upper-bound", action="store_true",
                        help="skip the fully labeled row (saves one training per fold; no 'gap closed' column)")
    parser.add_argument("--disable-tta", action="store_true",
                        help="predict the test set without nnU-Net's test-time mirroring (about 4x faster in 2d, "
                             "8x in 3d; recorded in the report)")
    parser.add_argument("--postprocess", action="store_true",
                        help="evaluate the test set after nnU-Net's postprocessing: per fold, "
                             "nnUNetv2_determine_postprocessing on its validation predictions (keep the largest "
                             "component where that helps), applied with nnUNetv2_apply_postprocessing (the "
                             "cross-validation table stays nnU-Net's validation as trained)")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="wall time for all trainings (with --budget): each training in turn gets an equal share "
                             "of the time left and stops after the epoch that passes it, with nnU-Net's final "
                             "checkpoint and validation; the report says which folds stopped early. Without "
                             "--time-limit, a later benchmark continues such folds to the full budget")
    parser.add_argument("--curve-every", type=int, metavar="EPOCHS",
                        help="learning curves: every training saves weight snapshots (student, and EMA teacher if "
                             "any) every EPOCHS epochs, each evaluated on the test set (no mirroring) and plotted "
                             "against iterations in learning_curves.png (default: about 8 points per training; 0: "
                             "no curves; needs a test set; folds trained earlier without snapshots have no curve)")
    parser.add_argument("--curve-cases", type=int, default=50, metavar="N",
                        help="evaluate the snapshots on an evenly spaced subset of at most N test cases (default "
                             "50; 0: all); the report's test table always uses all")
    parser.add_argument("--title", help="title of the report (default: Benchmark: <dataset>)")
    parser.set_defaults(func=_run)
