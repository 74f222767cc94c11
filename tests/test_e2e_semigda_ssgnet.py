"""End to end through the unmodified nnU-Net commands: SemiGDA and SSGNet in 2d.

Toy workspaces and helpers: tests/e2e_support.py.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from e2e_support import assert_stock_prediction_matches_validation, assert_terms_logged, kill_after_checkpoint

pytestmark = pytest.mark.e2e


def test_2d_semigda_trains_both_stages_resumes_and_predicts_identically(toy_2d, tiny_kl_folder, monkeypatch):
    """SemiGDA with a tiny random AutoencoderKL as the frozen Stable-Diffusion VAE: the latent-only stage, then every
    term; resumes with --c; the VAE stays out of the checkpoint, and stock nnUNetv2_predict (which rebuilds it from
    nnUNet_semi_sd_vae) reproduces the trainer's own validation, the two branches averaged."""
    monkeypatch.setitem(toy_2d.env, "nnUNet_semi_sd_vae", str(tiny_kl_folder))
    trainer, dataset = "nnUNetTrainerSemiGDA_3epochs_4its", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    interrupted = kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir)
    assert interrupted["current_epoch"] < 3

    toy_2d.train(502, "2d", trainer, "--c", "--npz")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["current_epoch"] == 3 and final["semi_state"]["global_step"] == 12
    terms = ("loss_latent_sup", "loss_latent_unsup", "loss_seg_sup", "loss_seg_unsup", "segmentation_stage")
    assert_terms_logged(final, terms, 3)
    assert final["logging"]["segmentation_stage"] == [0.75, 1.0, 1.0]  # round(0.1 * 12) = 1 latent-only step
    assert all(np.isfinite(final["logging"][t][-1]) and final["logging"][t][-1] > 0 for t in terms)
    weights = final["network_weights"]
    assert not any(k.startswith("vae.") for k in weights) and any(k.startswith("mapper.") for k in weights)
    log = max(fold_dir.glob("training_log_*.txt"), key=os.path.getmtime).read_text()
    assert f"SemiGDA VAE: sd:{tiny_kl_folder}" in log
    assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)

def test_semigda_refuses_a_missing_vae_before_training(toy_2d):
    env = {k: v for k, v in toy_2d.env.items() if k != "nnUNet_semi_sd_vae"}
    command = ["nnUNetv2_train", "502", "2d", "0", "-tr", "nnUNetTrainerSemiGDA", "-device", "cpu"]
    shown = subprocess.run(command, env=env, capture_output=True, text=True)
    assert shown.returncode != 0 and "nnUNet_semi_sd_vae is not set" in shown.stderr
    assert not toy_2d.fold_dir("Dataset502_ToySemi6", "nnUNetTrainerSemiGDA", "2d").exists()

def test_2d_ssgnet_rounds_resume_mid_round_and_predict_identically(toy_2d):
    """Stock nnUNetv2_train runs SSGNet's two pseudo-label rounds (with the adaptive t-vMF Dice loss); killed in round
    1 it resumes with round 1's stored pseudo-labels, and stock nnUNetv2_predict predicts what its final validation
    predicted."""
    trainer, dataset = "nnUNetTrainerSSGNet_tvMFDice_6epochs_3its", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    rounds = fold_dir / "pseudo_labels"
    interrupted = kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir, epochs_done=3)  # rounds: [0, 2, 4]
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
    assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)
