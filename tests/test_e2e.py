"""End to end through the unmodified nnU-Net commands: plan, train (our trainers), resume with --c, predict.

These run real nnU-Net processes on tiny generated data (a few minutes on a CPU in total).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_semi.env import nnunet_environment
from nnunet_semi.toy_data import write_toy_2d_folders, write_toy_3d_dataset

pytestmark = pytest.mark.e2e

RESUMABLE_TRAINER = """
from nnunet_semi.trainers import nnUNetTrainerMeanTeacher


class nnUNetTrainerMeanTeacher_resumable(nnUNetTrainerMeanTeacher):
    num_epochs = 4
    num_iterations_per_epoch = 3
    num_val_iterations_per_epoch = 1
    save_every = 1
"""


def _env(folders: dict, ext_folder: Path | None = None) -> dict:
    env = nnunet_environment({**os.environ, **{k: str(v) for k, v in folders.items()}})
    if ext_folder is not None:  # a user's own trainer folder next to ours
        env["nnUNet_extTrainer"] = os.pathsep.join((str(ext_folder), env["nnUNet_extTrainer"]))
    return env


def _run(command: list[str], env: dict, timeout: int = 900) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnunet_semi.cli", *args]


def _checkpoint(results: Path, dataset: str, trainer: str, configuration: str, name: str) -> dict:
    path = results / dataset / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0" / name
    return torch.load(path, map_location="cpu", weights_only=False)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while not path.exists():
        assert process.poll() is None, "training ended before writing its first checkpoint"
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.2)


def test_2d_mean_teacher_trains_resumes_and_predicts(nnunet_folders, tmp_path):
    ext = tmp_path / "my_trainers"
    ext.mkdir()
    (ext / "my_trainers.py").write_text(textwrap.dedent(RESUMABLE_TRAINER))
    env = _env(nnunet_folders, ext)
    images, masks = write_toy_2d_folders(tmp_path / "toy", num_cases=24, size=48)
    _run(_cli("convert-2d", str(images), str(masks), "-o", "501", "-n", "Toy", "--mask-values", "--label-names",
              "core", "rim"), env)
    _run(_cli("make-semi", "501", "-o", "502", "--count", "6", "--test-fraction", "0.2"), env)
    _run(_cli("plan", "502", "-c", "2d", "-np", "2", "-npfp", "2", "--verify_dataset_integrity"), env)

    trainer, dataset = "nnUNetTrainerMeanTeacher_resumable", "Dataset502_ToySemi6"
    fold_dir = nnunet_folders["nnUNet_results"] / dataset / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    # interrupt a training after its first checkpoint (written atomically, so always complete)
    process = subprocess.Popen(["nnUNetv2_train", "502", "2d", "0", "-tr", trainer, "-device", "cpu"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(fold_dir / "checkpoint_latest.pth", process)
    finally:
        process.kill()
        process.wait()
    interrupted = torch.load(fold_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert interrupted["current_epoch"] < 4 and not (fold_dir / "checkpoint_final.pth").exists()
    assert interrupted["semi_state"]["global_step"] == 3 * interrupted["current_epoch"]

    _run(["nnUNetv2_train", "502", "2d", "0", "-tr", trainer, "-device", "cpu", "--c"], env)
    final = _checkpoint(nnunet_folders["nnUNet_results"], dataset, trainer, "2d", "checkpoint_final.pth")
    assert final["trainer_name"] == trainer and final["current_epoch"] == 4
    assert final["semi_state"]["global_step"] == 4 * 3  # the step counter continued where it stopped
    assert set(final["semi_state"]["teacher"]) == set(final["network_weights"])
    for term in ("loss_supervised", "loss_consistency", "consistency_weight", "train_losses"):
        assert len(final["logging"][term]) == 4 and np.all(np.isfinite(final["logging"][term]))
    newest_log = max(fold_dir.glob("training_log_*.txt"), key=os.path.getmtime).read_text()
    assert f"Epoch {interrupted['current_epoch']}" in newest_log and "Epoch 0\n" not in newest_log
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert 0 <= summary["foreground_mean"]["Dice"] <= 1

    test_images = nnunet_folders["nnUNet_raw"] / dataset / "imagesTs"
    out = tmp_path / "predictions"
    _run(["nnUNetv2_predict", "-i", str(test_images), "-o", str(out), "-d", "502", "-c", "2d", "-f", "0", "-tr",
          trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    predicted = sorted(out.glob("*.png"))
    assert len(predicted) == len(list(test_images.glob("*.png"))) > 0
    assert set(np.unique(np.asarray(Image.open(predicted[0])))) <= {0, 1, 2}


def test_3d_fullres_mean_teacher_trains_and_predicts(nnunet_folders, tmp_path):
    env = _env(nnunet_folders)
    write_toy_3d_dataset(511, num_subjects=8, frames=2, shape=(8, 24, 24))
    _run(_cli("make-semi", "511", "-o", "512", "--count", "3", "--test-fraction", "0.15", "--group-regex",
              r"subj\d+"), env)
    _run(_cli("plan", "512", "-c", "3d_fullres", "-np", "2", "-npfp", "2"), env)
    trainer = "nnUNetTrainerMeanTeacher_2epochs_3its"
    _run(["nnUNetv2_train", "512", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
    final = _checkpoint(nnunet_folders["nnUNet_results"], "Dataset512_Toy3DSemi3", trainer, "3d_fullres",
                        "checkpoint_final.pth")
    assert final["semi_state"]["global_step"] == 6
    assert len(final["logging"]["loss_consistency"]) == 2

    test_images = nnunet_folders["nnUNet_raw"] / "Dataset512_Toy3DSemi3" / "imagesTs"
    out = tmp_path / "predictions"
    _run(["nnUNetv2_predict", "-i", str(test_images), "-o", str(out), "-d", "512", "-c", "3d_fullres", "-f", "0",
          "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    assert len(list(out.glob("*.nii.gz"))) == len(list(test_images.glob("*.nii.gz"))) > 0
