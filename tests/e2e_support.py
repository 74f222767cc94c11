"""What the end-to-end tests (``test_e2e_*.py``) share: toy workspaces, user trainer files and helpers.

The tests run real nnU-Net processes on tiny generated data. The toy datasets (2d: converted PNG images;
3d_fullres: NIfTI volumes with two frames per subject) are made and planned once (session fixtures ``toy_2d`` and
``toy_3d`` in conftest.py; the 2d one is shared by pytest-xdist's workers), so that the e2e tests can be spread
over several files and processes. Every test trains its own trainer name, so tests sharing a workspace never write
to the same folder. Predictions use nnU-Net's sequential mode on the CPU (``predictor_workers``, as the benchmark
does): spawned workers would each cost an interpreter importing torch, more than these cases take.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from nnunet_semi.env import nnunet_environment
from nnunet_semi.evaluation.benchmark import predictor_workers
from nnunet_semi.toy_data import write_toy_2d_folders, write_toy_3d_dataset

RESUMABLE_TRAINER = """
from nnunet_semi.trainers import nnUNetTrainerMeanTeacher


class nnUNetTrainerMeanTeacher_resumable(nnUNetTrainerMeanTeacher):
    num_epochs = 4
    num_iterations_per_epoch = 3
    num_val_iterations_per_epoch = 1
    save_every = 1
"""

# A method written only against the core's extension points: a classmethod-built network (planned network + learned
# class bias + a frozen, non-checkpointed input filter), an extra trainable module with its own learning-rate scale,
# the EMA teacher exported as network_weights. TOY_STOP_AT_EPOCH=k stops the run once k epochs are done (a crash
# after checkpoint_latest); TOY_RECORD=path saves what training starts from, to compare with the checkpoints.
EXTENSION_TRAINER = """
import os

import torch
from torch import nn

from nnunet_semi.core.frozen import FrozenPart, trainable_parameters
from nnunet_semi.core.network import PlannedNetworkWrapper, planned_network
from nnunet_semi.core.trainer import full_resolution
from nnunet_semi.trainers import nnUNetTrainerMeanTeacher


class BiasedNetwork(PlannedNetworkWrapper):
    def __init__(self, planned, num_classes, num_channels):
        super().__init__(planned)
        self.class_bias = nn.Parameter(torch.zeros(num_classes))
        smoother = nn.Conv2d(num_channels, num_channels, 3, padding=1, bias=False)
        with torch.no_grad():
            smoother.weight.fill_(0.05)
            smoother.weight[:, :, 1, 1] += 0.6  # reproducible from this code: kept out of checkpoints
        self.smoother = FrozenPart(smoother, source="fixed 3x3 smoothing")

    def forward(self, x):
        outputs = self.planned(self.smoother(x))
        bias = self.class_bias.view(1, -1, 1, 1)
        return [o + bias for o in outputs] if isinstance(outputs, (list, tuple)) else outputs + bias


class nnUNetTrainerToyExtension(nnUNetTrainerMeanTeacher):
    num_epochs = 3
    num_iterations_per_epoch = 2
    num_val_iterations_per_epoch = 1
    exported_network = "teacher"
    extra_module_lr_scale = {"projection": 0.5}
    train_terms = nnUNetTrainerMeanTeacher.train_terms + ("loss_aux",)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        planned = planned_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                  enable_deep_supervision)
        return BiasedNetwork(planned, num_output_channels, num_input_channels)

    def build_extra_modules(self):
        return {"projection": nn.Linear(self.label_manager.num_segmentation_heads, 4)}

    def compute_train_losses(self, labeled, unlabeled):
        terms = super().compute_train_losses(labeled, unlabeled)
        pooled = self.probabilities(full_resolution(self.network(labeled["data"]))).mean((2, 3))
        loss_aux = (self.extra_modules["projection"](pooled) - 1).square().mean()
        return {**terms, "loss": terms["loss"] + 0.1 * loss_aux, "loss_aux": loss_aux}

    def on_train_start(self):
        super().on_train_start()
        if "TOY_RECORD" in os.environ:
            torch.save({"global_step": self.global_step, "projection": self.extra_modules["projection"].state_dict(),
                        "teacher": self.teacher.state_dict(), "student": self.network.state_dict(),
                        "trainable_network_parameters": len(list(trainable_parameters(self.network)))},
                       os.environ["TOY_RECORD"])

    def on_epoch_end(self):
        super().on_epoch_end()
        if os.environ.get("TOY_STOP_AT_EPOCH") == str(self.current_epoch):
            raise SystemExit(f"stopped after {self.current_epoch} epochs")
"""


def run(command: list[str], env: dict, timeout: int = 900) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnunet_semi.cli", *args]


class Workspace:
    """nnU-Net folders and the environment of the nnU-Net processes that use them."""

    def __init__(self, root: Path, ext_folder: Path | None = None):
        self.root = root
        self.folders = {name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        for path in self.folders.values():
            path.mkdir(parents=True, exist_ok=True)
        self.env = nnunet_environment({**os.environ, **{k: str(v) for k, v in self.folders.items()}})
        if ext_folder is not None:  # a user's own trainer folder next to ours
            self.env["nnUNet_extTrainer"] = os.pathsep.join((str(ext_folder), self.env["nnUNet_extTrainer"]))

    def fold_dir(self, dataset: str, trainer: str, configuration: str) -> Path:
        return self.folders["nnUNet_results"] / dataset / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"

    def checkpoint(self, dataset: str, trainer: str, configuration: str, name="checkpoint_final.pth") -> dict:
        path = self.fold_dir(dataset, trainer, configuration) / name
        return torch.load(path, map_location="cpu", weights_only=False)

    def train(self, dataset_id: int, configuration: str, trainer: str, *extra: str) -> None:
        run(["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", trainer, "-device", "cpu", *extra],
             self.env)

    def predict_test_set(self, dataset: str, dataset_id: int, configuration: str, trainer: str) -> tuple[Path, Path]:
        images, out = self.folders["nnUNet_raw"] / dataset / "imagesTs", self.root / "predictions" / trainer
        run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", configuration,
              "-f", "0", "-tr", trainer, "-device", "cpu", *predictor_workers("cpu")], self.env)
        return images, out


def toy_2d_workspace(root: Path) -> Workspace:
    """The 2d toy workspace in ``root``, with the user trainer folder ``my_trainers`` next to ours."""
    return Workspace(root, user_trainers(root))


def user_trainers(root: Path) -> Path:
    return root / "my_trainers"


def build_toy_2d(root: Path) -> Workspace:
    """Dataset502_ToySemi6 (6 labeled, 13 unlabeled, 5 test PNG cases), its labeled twin 503 and full twin 504,
    planned by 'nnunet-semi plan' (one worker per nnU-Net pool: a spawned worker costs more than these cases)."""
    ext = user_trainers(root)
    ext.mkdir(parents=True)
    (ext / "my_trainers.py").write_text(textwrap.dedent(RESUMABLE_TRAINER))
    (ext / "my_extension_trainers.py").write_text(textwrap.dedent(EXTENSION_TRAINER))
    workspace = toy_2d_workspace(root)
    images, masks = write_toy_2d_folders(root / "toy", num_cases=24, size=48)
    run(cli("convert-2d", str(images), str(masks), "-o", "501", "-n", "Toy", "--mask-values", "--label-names",
              "core", "rim", "-np", "1"), workspace.env)
    run(cli("make-semi", "501", "-o", "502", "--full-id", "504", "--count", "6", "--test-fraction", "0.2"),
         workspace.env)
    run(cli("plan", "502", "-c", "2d", "-np", "1", "-npfp", "1", "--verify_dataset_integrity"), workspace.env)
    return workspace


def built_once(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str,
               build: Callable[[Path], Workspace], reopen: Callable[[Path], Workspace]) -> Workspace:
    """``build(folder)`` once per test run. Under pytest-xdist the workers share the run's temporary root: the
    first to take the lock builds there and marks the folder complete, the others ``reopen`` it."""
    if worker_id == "master":  # no xdist: the session's own folder
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if done.is_file():
            return reopen(folder)
        shutil.rmtree(folder, ignore_errors=True)  # what a worker whose build failed left
        workspace = build(folder)
        done.touch()
        return workspace


def build_toy_3d(root: Path) -> Workspace:
    """Dataset512_Toy3DSemi3: 3 labeled subjects (two frames each), the rest unlabeled or held out."""
    workspace = Workspace(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_raw", str(workspace.folders["nnUNet_raw"]))
        write_toy_3d_dataset(511, num_subjects=8, frames=2, shape=(8, 24, 24))
    run(cli("make-semi", "511", "-o", "512", "--count", "3", "--test-fraction", "0.15", "--group-regex",
              r"subj\d+"), workspace.env)
    run(cli("plan", "512", "-c", "3d_fullres", "-np", "1", "-npfp", "1"), workspace.env)
    return workspace


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while not path.exists():
        assert process.poll() is None, "training ended before writing its first checkpoint"
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.2)


def assert_terms_logged(checkpoint: dict, terms: tuple[str, ...], epochs: int) -> None:
    for term in terms:
        assert len(checkpoint["logging"][term]) == epochs, term


def kill_after_checkpoint(workspace: Workspace, dataset_id: int, configuration: str, trainer: str,
                           fold_dir: Path, epochs_done: int = 1) -> dict:
    """Start a training, kill it (with nnU-Net's augmentation workers) once its checkpoint_latest (written
    atomically, so always complete) holds at least ``epochs_done`` epochs, and return that checkpoint."""
    process = subprocess.Popen(["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", trainer, "-device",
                                "cpu"], env=workspace.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    latest = fold_dir / "checkpoint_latest.pth"
    try:
        wait_for(latest, process)
        while torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"] < epochs_done:
            assert process.poll() is None, f"training ended before {epochs_done} epochs were checkpointed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return torch.load(latest, map_location="cpu", weights_only=False)


def assert_stock_prediction_matches_validation(workspace: Workspace, dataset: str, dataset_id: int,
                                                trainer: str) -> None:
    """Stock nnUNetv2_predict on the validation cases gives what the trainer's own final validation (run with
    --npz) predicted: same probabilities, same segmentations."""
    validation = workspace.fold_dir(dataset, trainer, "2d") / "validation"
    cases = sorted(p.name[:-len(".npz")] for p in validation.glob("*.npz"))
    assert cases
    images, out = workspace.root / f"validation_images_{trainer}", workspace.root / f"validation_predicted_{trainer}"
    images.mkdir()
    for case in cases:
        shutil.copy(workspace.folders["nnUNet_raw"] / dataset / "imagesTr" / f"{case}_0000.png", images)
    # nnU-Net's predictor runs torch on min(nnUNet_def_n_proc, torch's default) threads, the trainer's validation on
    # torch's default: the same number of threads gives the same floating-point sums
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", "2d", "-f", "0",
          "-tr", trainer, "-device", "cpu", *predictor_workers("cpu"), "--save_probabilities"],
        {**workspace.env, "nnUNet_def_n_proc": str(torch.get_num_threads())})
    for case in cases:
        inside = np.load(validation / f"{case}.npz")["probabilities"]
        stock = np.load(out / f"{case}.npz")["probabilities"]
        np.testing.assert_allclose(stock, inside, atol=1e-6)
        assert np.array_equal(np.asarray(Image.open(out / f"{case}.png")),
                              np.asarray(Image.open(validation / f"{case}.png")))
