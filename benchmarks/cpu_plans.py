"""Smaller plans for CPU benchmarks: a copy of nnU-Net's plans with a smaller patch and batch, for a semi-supervised
dataset and its twins alike.

The README's ACDC benchmarks use ``nnUNetPlansCPU128``: nnU-Net's 2d plans of the ACDC semi-supervised dataset
(256 x 256 patches, batch 6, 7 stages) cut to 128 x 128 patches and batch 4, which a 2-core CPU trains in about
0.5-0.8 s per iteration instead of several seconds. The network topology for the new patch comes from nnU-Net's own
planner function (``get_pool_and_conv_props``: pool until the feature map edge reaches the planner's minimum of
4, so 6 stages at 128 x 128 and 1 mm spacing); features and convolutions per stage are the planned ones cut to
that many stages. Everything else (spacing, normalisation, resampling, ``data_identifier``) is kept, so the
already preprocessed data serves the new plans without preprocessing again:

    nnunet-semi plan 301 -c 2d
    python benchmarks/cpu_plans.py 301 -c 2d --patch-size 128 128 --batch-size 4 --name nnUNetPlansCPU128
    nnunet-semi benchmark 301 -c 2d -p nnUNetPlansCPU128 ...

The plans are written next to the source plans of the labeled-only twin, the semi-supervised dataset and the fully
labeled twin (when there is one), so that vanilla and every semi-supervised trainer train with the same plans.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.paths import nnUNet_preprocessed

from nnunet_semi.errors import UserError
from nnunet_semi.files import write_atomic
from nnunet_semi.planners.plan import related_datasets
from nnunet_semi.planners.raw import resolve_dataset

PER_STAGE = ("features_per_stage", "n_conv_per_stage", "n_blocks_per_stage")  # the last: residual encoder plans
MIN_FEATURE_MAP_EDGE = 4  # ExperimentPlanner.UNet_featuremap_min_edge_length, set in its __init__


def reduced_configuration(configuration: dict, patch_size: list[int], batch_size: int) -> dict:
    """A copy of one planned configuration with ``patch_size`` and ``batch_size`` and nnU-Net's topology for that
    patch. Only fewer stages than planned are possible (the planned per-stage lists are cut, never invented)."""
    spacing, given = configuration["spacing"], " ".join(map(str, patch_size))
    if len(patch_size) != len(spacing):
        raise UserError(f"--patch-size {given} has {len(patch_size)} axes, the "
                        f"configuration {len(spacing)} (spacing {spacing}).")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}.")
    _, strides, kernel_sizes, new_patch, _ = get_pool_and_conv_props(
        spacing, patch_size, MIN_FEATURE_MAP_EDGE, 999999)
    if [int(edge) for edge in new_patch] != list(patch_size):
        raise UserError(f"--patch-size {given} is not divisible by the network's "
                        f"downsampling; nnU-Net's planner would use {' '.join(map(str, new_patch))}.")
    reduced = copy.deepcopy(configuration)
    arch = reduced["architecture"]["arch_kwargs"]
    stages = len(strides)
    if stages > arch["n_stages"]:
        raise UserError(f"a {patch_size} patch needs {stages} stages, more than the {arch['n_stages']} planned; "
                        f"use a patch no larger than the planned {configuration['patch_size']}.")
    arch.update(n_stages=stages, strides=[list(s) for s in strides], kernel_sizes=[list(k) for k in kernel_sizes],
                **{key: arch[key][:stages] for key in PER_STAGE if key in arch},
                n_conv_per_stage_decoder=arch["n_conv_per_stage_decoder"][:stages - 1])
    reduced.update(patch_size=list(patch_size), batch_size=batch_size)
    return reduced


def reduced_plans(plans: dict, configurations: list[str], patch_size: list[int], batch_size: int,
                  name: str) -> dict:
    """Plans named ``name`` that hold only ``configurations``, each reduced (see :func:`reduced_configuration`)."""
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing:
        raise UserError(f"{plans['plans_name']} of {plans['dataset_name']} has no configuration "
                        f"{', '.join(missing)} (planned: {', '.join(plans['configurations'])}).")
    for c in configurations:
        configuration = plans["configurations"][c]
        if "architecture" not in configuration or "spacing" not in configuration:
            parent = configuration.get("inherits_from", "another configuration")
            raise UserError(f"{c} inherits its network from {parent} (a cascade stage): reduce {parent} instead "
                            f"(-c {parent}).")
    reduced = copy.deepcopy(plans)
    reduced["plans_name"] = name
    reduced["configurations"] = {c: reduced_configuration(plans["configurations"][c], patch_size, batch_size)
                                 for c in configurations}
    return reduced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="semi-supervised dataset made by make-semi and planned (id or name)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d"])
    parser.add_argument("--patch-size", nargs="+", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--name", required=True, help="identifier of the new plans, e.g. nnUNetPlansCPU128")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="source plans (default nnUNetPlans)")
    args = parser.parse_args(argv)
    try:
        semi = resolve_dataset(args.dataset)
        twin, targets = related_datasets(semi)
        texts = {}  # every dataset's plans are made before any is written
        for dataset in (twin, *targets):
            source = Path(nnUNet_preprocessed.require()) / dataset / f"{args.plans}.json"
            if not source.is_file():
                raise UserError(f"{source} does not exist: run 'nnunet-semi plan {semi}' first.")
            texts[source.with_name(f"{args.name}.json")] = json.dumps(reduced_plans(
                json.loads(source.read_text()), args.configurations, args.patch_size, args.batch_size, args.name),
                indent=2)
        for target, text in texts.items():
            write_atomic(target, lambda tmp, text=text: Path(tmp).write_text(text))
            print(f"wrote {target}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
