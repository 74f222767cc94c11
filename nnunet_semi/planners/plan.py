"""``nnunet-semi plan``: one set of nnU-Net plans for a semi-supervised dataset and its twins.

nnU-Net plans from a fingerprint of the training cases. Planned on the semi-supervised dataset itself, the
fingerprint would mix in unlabeled cases and count their ignore voxels as foreground (nnU-Net takes ``label > 0``
as foreground, which includes the ignore value), so intensity statistics used by CT normalisation would be
polluted, and the vanilla baseline would get different plans. Instead the labeled-only twin is planned by stock
nnU-Net (fingerprint from labeled cases only), and its plans and fingerprint are transferred to the
semi-supervised dataset and the fully labeled twin with nnU-Net's own ``move_plans_between_datasets``, then each
dataset is preprocessed with identical plans.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from nnunetv2.configuration import default_num_processes
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
    move_plans_between_datasets,
)
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

from nnunet_semi.errors import UserError
from nnunet_semi.planners.raw import raw_root, read_manifest, resolve_dataset
from nnunet_semi.cli_text import help_text

DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")


def related_datasets(semi: str, twin: str | None = None) -> tuple[str, list[str]]:
    """(labeled-only twin, datasets that receive its plans: the semi-supervised one and the full twin if any)."""
    manifest = read_manifest(semi) or {}
    if twin is None:
        if manifest.get("role") != "semi":
            raise UserError(f"{semi} was not made by 'nnunet-semi make-semi', so its labeled-only twin is unknown: "
                            f"pass --twin with the dataset that holds its labeled cases.")
        twin = manifest["labeled_twin"]
    targets = [semi] + ([manifest["full_twin"]] if manifest.get("full_twin") else [])
    return resolve_dataset(twin), [resolve_dataset(t) for t in targets]


def transfer_plans(source: str, target: str, plans_identifier: str) -> None:
    """Plans, fingerprint and dataset.json of ``target`` as nnU-Net's planner would leave them, from ``source``."""
    preprocessed = Path(nnUNet_preprocessed.require())
    (preprocessed / target).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(preprocessed / source / "dataset_fingerprint.json",
                    preprocessed / target / "dataset_fingerprint.json")
    move_plans_between_datasets(source, target, plans_identifier, plans_identifier)
    shutil.copyfile(raw_root() / target / "dataset.json", preprocessed / target / "dataset.json")


def plan_semi_supervised(semi: str | int, configurations=DEFAULT_CONFIGURATIONS, planner: str = "ExperimentPlanner",
                         num_processes: int = default_num_processes,
                         fingerprint_processes: int = default_num_processes, verify: bool = False,
                         twin: str | None = None, gpu_memory_target: float | None = None) -> str:
    """Plan the twin, transfer its plans, preprocess every dataset; returns the plans identifier."""
    semi = resolve_dataset(semi)
    twin, targets = related_datasets(semi, twin)
    if verify:
        for name in [twin, *targets]:
            verify_dataset_integrity(str(raw_root() / name), fingerprint_processes)
    twin_id = convert_dataset_name_to_id(twin)
    extract_fingerprints([twin_id], num_processes=fingerprint_processes, clean=True)
    plans_identifier = plan_experiments([twin_id], planner, gpu_memory_target)
    configurations = _configurations_in_plans(twin, plans_identifier, configurations)
    for name in targets:
        transfer_plans(twin, name, plans_identifier)
    preprocess([twin_id] + [convert_dataset_name_to_id(t) for t in targets], plans_identifier,
               configurations, [num_processes] * len(configurations))
    return plans_identifier


def planned_configurations(dataset: str, plans_identifier: str) -> list[str]:
    plans = json.loads((Path(nnUNet_preprocessed.require()) / dataset / f"{plans_identifier}.json").read_text())
    return list(plans["configurations"])


def _configurations_in_plans(dataset: str, plans_identifier: str, requested) -> list[str]:
    """The requested configurations that nnU-Net planned (e.g. no 3d_fullres for 2D images, no 3d_lowres for small
    volumes); stop when there is none."""
    available = planned_configurations(dataset, plans_identifier)
    kept = [c for c in requested if c in available]
    if not kept:
        raise UserError(f"None of the configurations {list(requested)} is in nnU-Net's plans for {dataset} "
                        f"(planned: {', '.join(available)}); ask for one of those with -c.")
    skipped = [c for c in requested if c not in available]
    if skipped:
        print(f"Not planned by nnU-Net for this dataset, skipped: {', '.join(skipped)}.")
    return kept


def _run(args: argparse.Namespace) -> int:
    plans = plan_semi_supervised(args.dataset, args.c, args.pl, args.np, args.npfp, args.verify_dataset_integrity,
                                 args.twin, args.gpu_memory_target)
    semi = resolve_dataset(args.dataset)
    twin, targets = related_datasets(semi, args.twin)
    configuration = next(c for c in args.c if c in planned_configurations(twin, plans))
    print(f"\nPlans '{plans}' of {twin} now also drive {', '.join(targets)}.")
    print(f"Train, e.g.:  nnUNetv2_train {convert_dataset_name_to_id(semi)} {configuration} 0 -tr "
          f"nnUNetTrainerMeanTeacher -p {plans}\n   baseline:  nnUNetv2_train {convert_dataset_name_to_id(twin)} "
          f"{configuration} 0 -p {plans}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="plan the labeled-only twin with nnU-Net and preprocess the semi-supervised dataset (and "
                     "twins) with the same plans", description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="semi-supervised dataset (id or name)")
    parser.add_argument("--twin", help="labeled-only twin, if the dataset was not made by make-semi")
    parser.add_argument("-c", nargs="+", default=list(DEFAULT_CONFIGURATIONS),
                        help="configurations to preprocess (default: 2d 3d_fullres 3d_lowres)")
    parser.add_argument("-pl", default="ExperimentPlanner", help="nnU-Net experiment planner class")
    parser.add_argument("-gpu_memory_target", type=float, default=None, help="as in nnUNetv2_plan_and_preprocess")
    parser.add_argument("-np", type=int, default=default_num_processes, help="preprocessing processes")
    parser.add_argument("-npfp", type=int, default=default_num_processes, help="fingerprint processes")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="run nnU-Net's dataset check on every dataset first")
    parser.set_defaults(func=_run)
