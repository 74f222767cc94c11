"""The stock nnU-Net command verifies and preprocesses a dataset that ``synthesize`` wrote (slow: real processes)."""
from __future__ import annotations

import os
import subprocess

import pytest
from test_synthesis_dataset import PNG_NAME, make_png_dataset, tiny_generator

from nnunet_semi.synthesis.classes import assign_classes
from nnunet_semi.synthesis.data import build_spec
from nnunet_semi.synthesis.synthesize import synthesize
from nnunet_semi.synthesis.writer import NewDatasetTarget

pytestmark = pytest.mark.e2e


def test_plan_and_preprocess_accepts_synthetic_cases(nnunet_folders):
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    generators = [tiny_generator(build_spec(PNG_NAME, c, refs, 16, "resize"), c)
                  for c, refs in assign_classes(PNG_NAME, "mask").items()]
    synthesize(NewDatasetTarget(PNG_NAME, 12, "PolypsSynth"), generators, {"no_foreground": 2, "polyp": 2}, 0, "cpu",
               4, 0, "test")
    env = {**os.environ, **{name: str(path) for name, path in nnunet_folders.items()}}
    result = subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "12", "-c", "2d", "-np", "2", "-npfp", "2",
                             "--verify_dataset_integrity"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    preprocessed = nnunet_folders["nnUNet_preprocessed"] / "Dataset012_PolypsSynth" / "nnUNetPlans_2d"
    assert {p.name.split(".")[0].removesuffix("_seg") for p in preprocessed.glob("synth_*")} == {
        "synth_no_foreground_000000", "synth_no_foreground_000001", "synth_polyp_000000", "synth_polyp_000001"}
