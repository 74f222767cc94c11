"""``nnunet-semi evaluate``: metrics of trained models' cross-validation or of prediction folders, as a report.

Each PREDICTIONS argument is either a trained nnU-Net model folder
(``$nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<configuration>``: its folds' validation predictions are evaluated
against ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations``) or a folder of predictions (e.g. written by
``nnUNetv2_predict`` for a test set), evaluated against ``--ground-truth`` (e.g. the raw dataset's ``labelsTs``),
which must hold exactly the same cases.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.folders import (
    evaluate_cross_validation,
    evaluate_test_set,
    is_model_folder,
    load_dataset_json,
    seconds_per_iteration,
    training_schedule,
)
from nnunet_semi.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, MODES
from nnunet_semi.evaluation.report import MethodResults, ReportSettings, TrainingBudget, write_report
from nnunet_semi.cli_text import help_text

TEST_RUN = "predictions"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice, IoU, HD95, ASD, ASSD, NSD of model folders or prediction folders, as a report.",
        description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", metavar="PREDICTIONS",
                        help="trained model folders (Trainer__Plans__configuration) and/or prediction folders")
    parser.add_argument("-o", "--output", required=True, help="folder for report.md/.csv/.json and the plots")
    parser.add_argument("-g", "--ground-truth",
                        help="reference segmentations; required for prediction folders, default for model folders: "
                             "$nnUNet_preprocessed/<dataset>/gt_segmentations")
    parser.add_argument("--dataset-json", help="dataset.json of the predictions' dataset; default: the one in the "
                                               "prediction folder, else next to the ground-truth folder")
    parser.add_argument("--names", nargs="+", help="one row name per PREDICTIONS (default: trainer or folder name)")
    parser.add_argument("--folds", nargs="+", help="folds of model folders (default: every validated fold)")
    parser.add_argument("--metrics", choices=MODES, default="nnunet",
                        help="nnunet: nnU-Net Dice/IoU + MONAI distances in mm; ssl4mis: SSL4MIS/BCP protocol "
                             "(medpy, voxel units, a missing class scores 0). Default: nnunet")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                        help=f"tolerance of the normalised surface Dice (default {DEFAULT_NSD_TOLERANCE_MM:g} mm)")
    parser.add_argument("--reference", metavar="NAME", help="row that is the reference (vanilla nnU-Net, labeled only)")
    parser.add_argument("--upper-bound", metavar="NAME", help="row that is the upper bound (nnU-Net, all labels)")
    parser.add_argument("--labeled-fractions", nargs="+", type=float, metavar="F",
                        help="labeled fraction (0-1] of each PREDICTIONS, for the Dice-versus-fraction plot")
    parser.add_argument("--title", default="Evaluation", help="report title")
    parser.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folders = [Path(p) for p in args.predictions]
    names = _per_folder(args.names, folders, "--names") or _default_names(folders)
    fractions = _per_folder(args.labeled_fractions, folders, "--labeled-fractions") or [None] * len(folders)
    for fraction in fractions:
        if fraction is not None and not 0 < fraction <= 1:
            raise UserError(f"--labeled-fractions takes fractions in (0, 1], got {fraction:g}.")
    roles = _roles(names, args.reference, args.upper_bound)
    methods = [_evaluate(folder, name, args) for folder, name in zip(folders, names)]
    for method, fraction, role in zip(methods, fractions, roles):
        method.labeled_fraction, method.role = fraction, role
    settings = ReportSettings(title=args.title, mode=args.metrics, nsd_tolerance_mm=args.nsd_tolerance,
                              details={name: str(folder) for name, folder in zip(names, folders)})
    files = write_report(methods, args.output, settings)
    print(f"Report written to {files.markdown} (tables: {files.csv.name}, all numbers: {files.json.name}, "
          f"plots: {', '.join(p.name for p in files.plots)}).")
    return 0


def _per_folder(values: list | None, folders: list[Path], option: str) -> list | None:
    if values is not None and len(values) != len(folders):
        raise UserError(f"{option} needs one value per PREDICTIONS folder: got {len(values)} for {len(folders)}.")
    return values


def _default_names(folders: list[Path]) -> list[str]:
    """The trainer of a model folder (``Trainer__Plans__configuration``), else the folder's name; prefixed with the
    parent folder (the dataset, for model folders) when that alone is ambiguous."""
    names = [f.resolve().name.split("__")[0] for f in folders]
    if len(set(names)) < len(names):
        names = [f"{f.resolve().parent.name}/{name}" for f, name in zip(folders, names)]
    return names


def _roles(names: list[str], reference: str | None, upper_bound: str | None) -> list[str]:
    for option, name in (("--reference", reference), ("--upper-bound", upper_bound)):
        if name is not None and name not in names:
            raise UserError(f"{option} '{name}' is none of the row names ({', '.join(names)}); use --names.")
    return ["reference" if n == reference else "upper_bound" if n == upper_bound else "method" for n in names]


def _evaluate(folder: Path, name: str, args: argparse.Namespace) -> MethodResults:
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist.")
    if is_model_folder(folder):
        folds = [int(f) if f.isdigit() else f for f in args.folds] if args.folds else None
        cv = evaluate_cross_validation(folder, folds, reference_folder=args.ground_truth, mode=args.metrics,
                                       nsd_tolerance_mm=args.nsd_tolerance, num_processes=args.num_processes,
                                       name=name)
        schedule = training_schedule(folder, list(cv))
        return MethodResults(name=name, cv=cv, seconds_per_iteration=seconds_per_iteration(folder, list(cv)),
                             budget=TrainingBudget(*schedule) if schedule else None)
    if not args.ground_truth:
        raise UserError(f"{folder} is a folder of predictions, not a trained model folder: give the reference "
                        f"segmentations with --ground-truth (e.g. the raw dataset's labelsTs).")
    dataset_json = load_dataset_json(_dataset_json_path(folder, Path(args.ground_truth), args.dataset_json))
    cases = evaluate_test_set(args.ground_truth, folder, dataset_json, mode=args.metrics,
                              nsd_tolerance_mm=args.nsd_tolerance, num_processes=args.num_processes, progress=name)
    return MethodResults(name=name, test={TEST_RUN: cases})


def _dataset_json_path(prediction_folder: Path, ground_truth: Path, given: str | None) -> Path:
    """--dataset-json, else the copy nnUNetv2_predict leaves in its output, else the raw dataset's (labelsTs/..)."""
    if given:
        return Path(given)
    for candidate in (prediction_folder / "dataset.json", ground_truth.resolve().parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    raise UserError(f"No dataset.json in {prediction_folder} or next to {ground_truth}: give --dataset-json.")
