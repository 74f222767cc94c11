"""StyleGAN3-T from train-gan to a dataset that the stock nnU-Net command verifies and preprocesses (slow: real
processes)."""
from __future__ import annotations

import os
import subprocess

import pytest
from PIL import Image
from test_synthesis_cli import TINY_GAN
from test_synthesis_dataset import make_png_dataset

from nnunet_semi.cli import main
from nnunet_semi.synthesis.training import load_checkpoint

pytestmark = pytest.mark.e2e


def test_stylegan3_trains_resumes_and_synthesises_what_plan_and_preprocess_accepts(nnunet_folders, tmp_path):
    make_png_dataset(nnunet_folders["nnUNet_raw"])  # real images 20 x 16
    gans = tmp_path / "gans"
    options = ["--arch", "stylegan3-t", "--classes", "mask", *TINY_GAN]
    assert main(["train-gan", "11", "-o", str(gans), "--kimg", "0.008", *options]) == 0
    assert main(["train-gan", "11", "-o", str(gans), "--kimg", "0.012", "--resume", *options]) == 0
    assert load_checkpoint(gans / "polyp" / "latest-state.pt")["step_index"] == 3
    assert main(["synthesize", "11", "--generators", str(gans), "--per-class", "2", "--new-id", "12",
                 "--new-name", "PolypsSynth", "--device", "cpu"]) == 0
    new = nnunet_folders["nnUNet_raw"] / "Dataset012_PolypsSynth"
    assert Image.open(new / "imagesTr" / "synth_polyp_000000_0000.png").size == (16, 20)  # real size, not 16 x 16
    env = {**os.environ, **{name: str(path) for name, path in nnunet_folders.items()}}
    result = subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "12", "-c", "2d", "-np", "2", "-npfp", "2",
                             "--verify_dataset_integrity"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    preprocessed = nnunet_folders["nnUNet_preprocessed"] / "Dataset012_PolypsSynth" / "nnUNetPlans_2d"
    assert {p.name.split(".")[0].removesuffix("_seg") for p in preprocessed.glob("synth_*")} == {
        "synth_no_foreground_000000", "synth_no_foreground_000001", "synth_polyp_000000", "synth_polyp_000001"}
