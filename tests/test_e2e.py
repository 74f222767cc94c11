"""End to end through the unmodified nnU-Net commands: plan, train (our trainers), resume with --c, predict.

These run real nnU-Net processes on tiny generated data (a few minutes on a CPU in total). The datasets are made
and planned once per module (2d: converted PNG images; 3d_fullres: NIfTI volumes with two frames per subject).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
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


def _run(command: list[str], env: dict, timeout: int = 900) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnunet_semi.cli", *args]


class Workspace:
    """nnU-Net folders and the environment of the nnU-Net processes that use them."""

    def __init__(self, root: Path, ext_folder: Path | None = None):
        self.root = root
        self.folders = {name: root / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        for path in self.folders.values():
            path.mkdir(parents=True)
        self.env = nnunet_environment({**os.environ, **{k: str(v) for k, v in self.folders.items()}})
        if ext_folder is not None:  # a user's own trainer folder next to ours
            self.env["nnUNet_extTrainer"] = os.pathsep.join((str(ext_folder), self.env["nnUNet_extTrainer"]))

    def fold_dir(self, dataset: str, trainer: str, configuration: str) -> Path:
        return self.folders["nnUNet_results"] / dataset / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"

    def checkpoint(self, dataset: str, trainer: str, configuration: str, name="checkpoint_final.pth") -> dict:
        path = self.fold_dir(dataset, trainer, configuration) / name
        return torch.load(path, map_location="cpu", weights_only=False)

    def train(self, dataset_id: int, configuration: str, trainer: str, *extra: str) -> None:
        _run(["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", trainer, "-device", "cpu", *extra],
             self.env)

    def predict_test_set(self, dataset: str, dataset_id: int, configuration: str, trainer: str) -> tuple[Path, Path]:
        images, out = self.folders["nnUNet_raw"] / dataset / "imagesTs", self.root / "predictions" / trainer
        _run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", configuration,
              "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], self.env)
        return images, out


@pytest.fixture(scope="module")
def toy_2d(tmp_path_factory) -> Workspace:
    """Dataset502_ToySemi6 (6 labeled, 13 unlabeled, 5 test PNG cases), its labeled twin 503 and full twin 504,
    planned by 'nnunet-semi plan'."""
    root = tmp_path_factory.mktemp("e2e_2d")
    ext = root / "my_trainers"
    ext.mkdir()
    (ext / "my_trainers.py").write_text(textwrap.dedent(RESUMABLE_TRAINER))
    (ext / "my_extension_trainers.py").write_text(textwrap.dedent(EXTENSION_TRAINER))
    workspace = Workspace(root, ext)
    images, masks = write_toy_2d_folders(root / "toy", num_cases=24, size=48)
    _run(_cli("convert-2d", str(images), str(masks), "-o", "501", "-n", "Toy", "--mask-values", "--label-names",
              "core", "rim"), workspace.env)
    _run(_cli("make-semi", "501", "-o", "502", "--full-id", "504", "--count", "6", "--test-fraction", "0.2"),
         workspace.env)
    _run(_cli("plan", "502", "-c", "2d", "-np", "2", "-npfp", "2", "--verify_dataset_integrity"), workspace.env)
    return workspace


@pytest.fixture(scope="module")
def toy_3d(tmp_path_factory) -> Workspace:
    """Dataset512_Toy3DSemi3: 3 labeled subjects (two frames each), the rest unlabeled or held out."""
    workspace = Workspace(tmp_path_factory.mktemp("e2e_3d"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_raw", str(workspace.folders["nnUNet_raw"]))
        write_toy_3d_dataset(511, num_subjects=8, frames=2, shape=(8, 24, 24))
    _run(_cli("make-semi", "511", "-o", "512", "--count", "3", "--test-fraction", "0.15", "--group-regex",
              r"subj\d+"), workspace.env)
    _run(_cli("plan", "512", "-c", "3d_fullres", "-np", "2", "-npfp", "2"), workspace.env)
    return workspace


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while not path.exists():
        assert process.poll() is None, "training ended before writing its first checkpoint"
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.2)


def _assert_terms_logged(checkpoint: dict, terms: tuple[str, ...], epochs: int) -> None:
    for term in terms:
        assert len(checkpoint["logging"][term]) == epochs, term


def _kill_after_checkpoint(workspace: Workspace, dataset_id: int, configuration: str, trainer: str,
                           fold_dir: Path, epochs_done: int = 1) -> dict:
    """Start a training, kill it (with nnU-Net's augmentation workers) once its checkpoint_latest (written
    atomically, so always complete) holds at least ``epochs_done`` epochs, and return that checkpoint."""
    process = subprocess.Popen(["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", trainer, "-device",
                                "cpu"], env=workspace.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    latest = fold_dir / "checkpoint_latest.pth"
    try:
        _wait_for(latest, process)
        while torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"] < epochs_done:
            assert process.poll() is None, f"training ended before {epochs_done} epochs were checkpointed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return torch.load(latest, map_location="cpu", weights_only=False)


def _assert_stock_prediction_matches_validation(workspace: Workspace, dataset: str, dataset_id: int,
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
    _run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", "2d", "-f", "0",
          "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities"], workspace.env)
    for case in cases:
        inside = np.load(validation / f"{case}.npz")["probabilities"]
        stock = np.load(out / f"{case}.npz")["probabilities"]
        np.testing.assert_allclose(stock, inside, atol=1e-6)
        assert np.array_equal(np.asarray(Image.open(out / f"{case}.png")),
                              np.asarray(Image.open(validation / f"{case}.png")))


def test_2d_mean_teacher_trains_resumes_and_predicts(toy_2d):
    trainer, dataset = "nnUNetTrainerMeanTeacher_resumable", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    interrupted = _kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir)
    assert interrupted["current_epoch"] < 4 and not (fold_dir / "checkpoint_final.pth").exists()
    assert interrupted["semi_state"]["global_step"] == 3 * interrupted["current_epoch"]

    toy_2d.train(502, "2d", trainer, "--c")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["trainer_name"] == trainer and final["current_epoch"] == 4
    assert final["semi_state"]["global_step"] == 4 * 3  # the step counter continued where it stopped
    assert set(final["semi_state"]["teacher"]) == set(final["network_weights"])
    _assert_terms_logged(final, ("loss_supervised", "loss_consistency", "consistency_weight", "train_losses"), 4)
    assert np.all(np.isfinite(final["logging"]["loss_consistency"]))
    newest_log = max(fold_dir.glob("training_log_*.txt"), key=os.path.getmtime).read_text()
    assert f"Epoch {interrupted['current_epoch']}" in newest_log and "Epoch 0\n" not in newest_log
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert 0 <= summary["foreground_mean"]["Dice"] <= 1

    images, predictions = toy_2d.predict_test_set(dataset, 502, "2d", trainer)
    predicted = sorted(predictions.glob("*.png"))
    assert len(predicted) == len(list(images.glob("*.png"))) > 0
    assert set(np.unique(np.asarray(Image.open(predicted[0])))) <= {0, 1, 2}


def test_extension_points_train_resume_and_predict_identically(toy_2d):
    """A trainer built on the core's hooks trains, resumes bit-exactly with --c and predicts through stock
    nnUNetv2_predict exactly what its own final validation predicted (with the exported teacher)."""
    trainer, dataset = "nnUNetTrainerToyExtension", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    record = toy_2d.root / "toy_record.pt"
    stopped = subprocess.run(["nnUNetv2_train", "502", "2d", "0", "-tr", trainer, "-device", "cpu"],
                             env={**toy_2d.env, "TOY_STOP_AT_EPOCH": "1"}, capture_output=True, text=True)
    assert stopped.returncode != 0 and "stopped after 1 epochs" in stopped.stderr
    latest = torch.load(fold_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    semi = latest["semi_state"]
    assert latest["current_epoch"] == 1 and semi["global_step"] == 2 and semi["exported"] == "teacher"
    assert not any("smoother" in k for k in latest["network_weights"])  # frozen part: rebuilt, not stored
    assert all(torch.equal(latest["network_weights"][k], v) for k, v in semi["teacher"].items())

    _run(["nnUNetv2_train", "502", "2d", "0", "-tr", trainer, "-device", "cpu", "--c", "--npz"],
         {**toy_2d.env, "TOY_RECORD": str(record)})
    resumed = torch.load(record, weights_only=False)
    assert resumed["global_step"] == 2
    for name, saved in (("projection", semi["extra_modules"]["projection"]), ("teacher", semi["teacher"]),
                        ("student", semi["student"])):
        assert set(resumed[name]) == set(saved) and all(torch.equal(resumed[name][k], v) for k, v in saved.items())
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["current_epoch"] == 3 and final["semi_state"]["global_step"] == 6
    _assert_terms_logged(final, ("loss_aux", "loss_consistency"), 3)
    groups = final["optimizer_state"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.5 * groups[0]["lr"])
    assert len(groups[0]["params"]) == resumed["trainable_network_parameters"]  # no frozen tensor optimised
    assert not torch.equal(final["semi_state"]["student"]["class_bias"], final["network_weights"]["class_bias"])

    _assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)  # teacher exported

    # -pretrained_weights: the teacher starts from the loaded student, not from the random initialisation
    pretrained = subprocess.run(["nnUNetv2_train", "502", "2d", "1", "-tr", trainer, "-device", "cpu",
                                 "-pretrained_weights", str(fold_dir / "checkpoint_final.pth")],
                                env={**toy_2d.env, "TOY_RECORD": str(record), "TOY_STOP_AT_EPOCH": "1"},
                                capture_output=True, text=True)
    assert "stopped after 1 epochs" in pretrained.stderr, pretrained.stderr[-2000:]
    started = torch.load(record, weights_only=False)
    loaded = final["network_weights"]
    encoder_keys = [k for k in loaded if k.startswith("planned.encoder.")]
    assert encoder_keys and all(torch.equal(started["student"][k], loaded[k]) for k in encoder_keys)
    assert all(torch.equal(started["teacher"][k], started["student"][k]) for k in started["teacher"])


def test_2d_scdl_cps_trains_both_networks_resumes_and_predicts_identically(toy_2d):
    """SCDL over CPS: both networks (each with its own proxies and priors) train, are checkpointed, resume with --c,
    and stock nnUNetv2_predict reproduces the trainer's own validation (priors applied, deterministic in eval)."""
    trainer, dataset = "nnUNetTrainerSCDL_CPS_3epochs_2its", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    interrupted = _kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir)
    assert interrupted["current_epoch"] < 3
    second = interrupted["semi_state"]["extra_modules"]["second"]
    assert set(second) == set(interrupted["network_weights"]) and "proxies.means" in second
    assert any(k.startswith("prior_projections.") for k in second)
    assert not torch.equal(second["proxies.means"], interrupted["network_weights"]["proxies.means"])

    toy_2d.train(502, "2d", trainer, "--c", "--npz")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["current_epoch"] == 3 and final["semi_state"]["global_step"] == 6
    _assert_terms_logged(final, ("loss_supervised", "loss_cps", "loss_e2p", "loss_p2e", "loss_sac"), 3)
    assert all(np.isfinite(final["logging"][t][-1]) and final["logging"][t][-1] > 0
               for t in ("loss_cps", "loss_e2p", "loss_p2e", "loss_sac"))
    assert len(final["optimizer_state"]["param_groups"]) == 2  # second network optimised with the first
    _assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)


def test_2d_sra_seg_both_phases_and_predicts(toy_2d):
    trainer, dataset = "nnUNetTrainerSRASeg_effnetSA_3epochs_4its", "Dataset502_ToySemi6"
    toy_2d.train(502, "2d", trainer)
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    _assert_terms_logged(final, ("loss_seg", "loss_sa", "domain_gap"), 3)
    logging = final["logging"]
    assert np.isfinite(logging["loss_sa"][0])  # epoch 0: 2 warm-up steps (NaN) and 2 with SA, NaN-aware mean
    assert np.isfinite(logging["loss_sa"][-1]) and logging["loss_sa"][-1] > 0  # semi-supervised phase with SA
    assert np.isfinite(logging["domain_gap"][-1]) and logging["domain_gap"][-1] > 0
    assert final["semi_state"]["global_step"] == 12 and "teacher" in final["semi_state"]
    log = max(toy_2d.fold_dir(dataset, trainer, "2d").glob("training_log_*.txt"), key=os.path.getmtime).read_text()
    assert "EMA teacher initialised from the student after 2 iterations" in log
    assert "SA feature extractor: efficientnet_lite0" in log
    images, predictions = toy_2d.predict_test_set(dataset, 502, "2d", trainer)
    assert len(list(predictions.glob("*.png"))) == len(list(images.glob("*.png")))


def test_2d_semigda_trains_both_stages_resumes_and_predicts_identically(toy_2d, tiny_kl_folder, monkeypatch):
    """SemiGDA with a tiny random AutoencoderKL as the frozen Stable-Diffusion VAE: the latent-only stage, then every
    term; resumes with --c; the VAE stays out of the checkpoint, and stock nnUNetv2_predict (which rebuilds it from
    nnUNet_semi_sd_vae) reproduces the trainer's own validation, the two branches averaged."""
    monkeypatch.setitem(toy_2d.env, "nnUNet_semi_sd_vae", str(tiny_kl_folder))
    trainer, dataset = "nnUNetTrainerSemiGDA_3epochs_4its", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    interrupted = _kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir)
    assert interrupted["current_epoch"] < 3

    toy_2d.train(502, "2d", trainer, "--c", "--npz")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["current_epoch"] == 3 and final["semi_state"]["global_step"] == 12
    terms = ("loss_latent_sup", "loss_latent_unsup", "loss_seg_sup", "loss_seg_unsup", "segmentation_stage")
    _assert_terms_logged(final, terms, 3)
    assert final["logging"]["segmentation_stage"] == [0.75, 1.0, 1.0]  # round(0.1 * 12) = 1 latent-only step
    assert all(np.isfinite(final["logging"][t][-1]) and final["logging"][t][-1] > 0 for t in terms)
    weights = final["network_weights"]
    assert not any(k.startswith("vae.") for k in weights) and any(k.startswith("mapper.") for k in weights)
    log = max(fold_dir.glob("training_log_*.txt"), key=os.path.getmtime).read_text()
    assert f"SemiGDA VAE: sd:{tiny_kl_folder}" in log
    _assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)


def test_2d_ssgnet_rounds_resume_mid_round_and_predict_identically(toy_2d):
    """Stock nnUNetv2_train runs SSGNet's two pseudo-label rounds (with the adaptive t-vMF Dice loss); killed in round
    1 it resumes with round 1's stored pseudo-labels, and stock nnUNetv2_predict predicts what its final validation
    predicted."""
    trainer, dataset = "nnUNetTrainerSSGNet_tvMFDice_6epochs_3its", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    rounds = fold_dir / "pseudo_labels"
    interrupted = _kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir, epochs_done=3)  # rounds: [0, 2, 4]
    assert interrupted["current_epoch"] in (3, 4)
    stamps = {p.name: p.stat().st_mtime_ns for p in (rounds / "round_1").glob("*.pkl")}
    assert len(stamps) == 13  # every unlabeled training case of the toy dataset

    toy_2d.train(502, "2d", trainer, "--c", "--npz")
    assert {p.name: p.stat().st_mtime_ns for p in (rounds / "round_1").glob("*.pkl")} == stamps  # not predicted again
    assert {p.name for p in (rounds / "round_2").glob("*.pkl")} == set(stamps)
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["logging"]["pseudo_label_round"] == [0, 0, 1, 1, 2, 2]
    log = max(fold_dir.glob("training_log_*.txt"), key=os.path.getmtime).read_text()
    assert "Round 2: training on 4 labeled and 13 of 13 pseudo-labeled cases" in log and "t-vMF kappa" in log
    _assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)


def test_semigda_refuses_3d_and_a_missing_vae_before_training(toy_3d, toy_2d):
    command = ["nnUNetv2_train", "512", "3d_fullres", "0", "-tr", "nnUNetTrainerSemiGDA_TAESD", "-device", "cpu"]
    shown = subprocess.run(command, env=toy_3d.env, capture_output=True, text=True)
    assert shown.returncode != 0 and "works on 2D images only: train configuration '2d'" in shown.stderr
    env = {k: v for k, v in toy_2d.env.items() if k != "nnUNet_semi_sd_vae"}
    command = ["nnUNetv2_train", "502", "2d", "0", "-tr", "nnUNetTrainerSemiGDA", "-device", "cpu"]
    shown = subprocess.run(command, env=env, capture_output=True, text=True)
    assert shown.returncode != 0 and "nnUNet_semi_sd_vae is not set" in shown.stderr
    assert not toy_2d.fold_dir("Dataset502_ToySemi6", "nnUNetTrainerSemiGDA", "2d").exists()


def test_3d_fullres_scdl_over_mean_teacher_and_sra_seg_train_and_predict(toy_3d):
    dataset = "Dataset512_Toy3DSemi3"
    # SCDL runs Mean Teacher's whole step plus its own terms
    scdl_terms = ("loss_consistency", "loss_e2p", "loss_p2e", "loss_sac")
    for trainer, terms in (("nnUNetTrainerSCDL_2epochs_3its", scdl_terms),
                           ("nnUNetTrainerSRASeg_effnetSA_2epochs_3its", ("loss_seg", "loss_sa", "domain_gap"))):
        toy_3d.train(512, "3d_fullres", trainer)
        final = toy_3d.checkpoint(dataset, trainer, "3d_fullres")
        assert final["semi_state"]["global_step"] == 6
        _assert_terms_logged(final, terms, 2)
        assert np.isfinite(final["logging"][terms[0]][-1])
        images, predictions = toy_3d.predict_test_set(dataset, 512, "3d_fullres", trainer)
        assert len(list(predictions.glob("*.nii.gz"))) == len(list(images.glob("*.nii.gz"))) > 0


def test_benchmark_trains_evaluates_and_reports(toy_2d):
    output = toy_2d.root / "benchmark"
    # the upper-bound row (one more training) is covered by tests/test_benchmark_rows.py and the report tests;
    # a time limit that has passed at once stops every training after its first epoch, with nnU-Net's final
    # checkpoint, validation and a prediction all the same
    command = _cli("benchmark", "502", "-tr", "nnUNetTrainerMeanTeacher", "-f", "0", "--budget", "2x2", "-o",
                   str(output), "--no-upper-bound", "--time-limit", "0.0001")
    shown = subprocess.run(command, env=toy_2d.env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    # progress on the console: which run trains, and its epochs
    assert "[2/2] nnUNetTrainerMeanTeacher_2epochs_2its on Dataset502_ToySemi6 fold 0" in shown.stderr
    assert "1/2" in shown.stderr
    report = json.loads((output / "report.json").read_text())
    markdown = (output / "report.md").read_text()
    for row in ("nnU-Net (labeled only)", "nnUNetTrainerMeanTeacher"):
        assert row in markdown
    assert "2 epochs x 2 it" in markdown and (output / "dice_per_method.png").is_file()
    assert "## Test set" in markdown and len(list(output.glob("test_predictions/*/*/fold_0/*.png"))) == 2 * 5
    vanilla = toy_2d.fold_dir("Dataset503_ToySemi6Labeled", "nnUNetTrainer_2epochs_2its", "2d")
    assert toy_2d.checkpoint("Dataset503_ToySemi6Labeled", "nnUNetTrainer_2epochs_2its", "2d")["current_epoch"] == 1
    assert [(m["name"], m["role"]) for m in report["methods"]] == [
        ("nnU-Net (labeled only)", "reference"), ("nnUNetTrainerMeanTeacher", "method")]
    assert all(set(m["test"]) == {"0"} and set(m["cv"]) == {"0"} for m in report["methods"])
    for method in report["methods"]:
        summary = method["training"]["0"]
        assert (summary["epochs_trained"], summary["epochs_planned"], summary["stopped_at_time_limit"]) == (1, 2, True)
        assert summary["peak_gpu_memory_mib"] is None and summary["peak_main_process_rss_mib"] > 0
    assert "Stopped early" in markdown and "fold 0: 1/2 epochs" in markdown
    assert "Time limit reached: stopping after 1 of 2 epochs" in \
        max(vanilla.glob("training_log_*.txt"), key=os.path.getmtime).read_text()

    # everything is there now: --no-train only evaluates (folds a time limit stopped count as done only under a
    # time limit); a missing training is an error and keeps the report
    before = (output / "report.md").stat().st_mtime
    _run(command + ["--no-train"], toy_2d.env)
    assert (output / "report.md").stat().st_mtime > before
    for flags in (["-tr", "nnUNetTrainerSRASeg", "--time-limit", "1"], ["-tr", "nnUNetTrainerMeanTeacher"]):
        failing = subprocess.run(_cli("benchmark", "502", "-f", "0", "--budget", "2x2", "-o", str(output),
                                      "--no-train", *flags), env=toy_2d.env, capture_output=True, text=True)
        assert failing.returncode == 2 and "--no-train given but" in failing.stderr
    assert "nnUNetTrainerSRASeg" not in (output / "report.md").read_text()
