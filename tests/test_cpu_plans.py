"""benchmarks/cpu_plans.py: the smaller plans of the README's CPU benchmarks."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nnunet_semi.errors import UserError

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_plans.py"
_spec = importlib.util.spec_from_file_location("cpu_plans", _SCRIPT)
cpu_plans = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_plans)


def planned_2d() -> dict:
    """The shape of nnU-Net's 2d plans for 1 mm images (ACDC's: 256 x 256, batch 6, 7 stages)."""
    stages = 7
    return {"plans_name": "nnUNetPlans", "dataset_name": "Dataset999_Toy", "configurations": {"2d": {
        "data_identifier": "nnUNetPlans_2d", "batch_size": 6, "patch_size": [256, 256], "spacing": [1.0, 1.0],
        "architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {
            "n_stages": stages, "features_per_stage": [min(32 * 2 ** i, 512) for i in range(stages)],
            "kernel_sizes": [[3, 3]] * stages, "strides": [[1, 1]] + [[2, 2]] * (stages - 1),
            "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True}}},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres"}}}


def test_reduced_plans_take_nnunets_topology_for_the_smaller_patch_and_keep_the_rest():
    plans = planned_2d()
    reduced = cpu_plans.reduced_plans(plans, ["2d"], [128, 128], 4, "nnUNetPlansCPU128")
    assert reduced["plans_name"] == "nnUNetPlansCPU128" and list(reduced["configurations"]) == ["2d"]
    configuration = reduced["configurations"]["2d"]
    assert configuration["patch_size"] == [128, 128] and configuration["batch_size"] == 4
    assert configuration["data_identifier"] == "nnUNetPlans_2d"  # the preprocessed data is reused
    arch = configuration["architecture"]["arch_kwargs"]
    # 128 / 2**5 = 4, nnU-Net's smallest feature map edge: 5 poolings, 6 stages
    assert arch["n_stages"] == 6 and arch["strides"] == [[1, 1]] + [[2, 2]] * 5
    assert arch["features_per_stage"] == [32, 64, 128, 256, 512, 512] and arch["kernel_sizes"] == [[3, 3]] * 6
    assert arch["n_conv_per_stage"] == [2] * 6 and arch["n_conv_per_stage_decoder"] == [2] * 5
    assert arch["conv_bias"] is True
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["n_stages"] == 7  # source untouched


@pytest.mark.parametrize("configurations, patch, batch, message", [
    (["2d"], [100, 100], 4, "nnU-Net's planner would use 112 112"),
    (["2d"], [512, 512], 4, "needs 8 stages, more than the 7 planned"),
    (["2d"], [64, 64, 64], 4, "has 3 axes, the configuration 2"),
    (["2d"], [128, 128], 0, "--batch-size must be >= 1"),
    (["3d_lowres"], [128, 128], 4, "has no configuration 3d_lowres"),
    (["3d_cascade_fullres"], [128, 128], 4,
     r"3d_cascade_fullres inherits its network from 3d_fullres \(a cascade stage\): reduce 3d_fullres"),
])
def test_reduced_plans_refuse_what_nnunet_would_not_plan(configurations, patch, batch, message):
    with pytest.raises(UserError, match=message):
        cpu_plans.reduced_plans(planned_2d(), configurations, patch, batch, "x")
