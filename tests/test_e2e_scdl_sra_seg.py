"""End to end through the unmodified nnU-Net commands: SCDL over CPS and over Mean Teacher's defaults, and SRA-Seg
in 2d.

Toy workspaces and helpers: tests/e2e_support.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from e2e_support import assert_stock_prediction_matches_validation, assert_terms_logged, kill_after_checkpoint

pytestmark = pytest.mark.e2e


def test_2d_scdl_cps_trains_both_networks_resumes_and_predicts_identically(toy_2d):
    """SCDL over CPS: both networks (each with its own proxies and priors) train, are checkpointed, resume with --c,
    and stock nnUNetv2_predict reproduces the trainer's own validation (priors applied, deterministic in eval)."""
    trainer, dataset = "nnUNetTrainerSCDL_CPS_3epochs_2its", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    interrupted = kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir)
    assert interrupted["current_epoch"] < 3
    second = interrupted["semi_state"]["extra_modules"]["second"]
    assert set(second) == set(interrupted["network_weights"]) and "proxies.means" in second
    assert any(k.startswith("prior_projections.") for k in second)
    assert not torch.equal(second["proxies.means"], interrupted["network_weights"]["proxies.means"])

    toy_2d.train(502, "2d", trainer, "--c", "--npz")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["current_epoch"] == 3 and final["semi_state"]["global_step"] == 6
    assert_terms_logged(final, ("loss_supervised", "loss_cps", "loss_e2p", "loss_p2e", "loss_sac"), 3)
    assert all(np.isfinite(final["logging"][t][-1]) and final["logging"][t][-1] > 0
               for t in ("loss_cps", "loss_e2p", "loss_p2e", "loss_sac"))
    assert len(final["optimizer_state"]["param_groups"]) == 2  # second network optimised with the first
    assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)


def test_2d_scdl_over_mean_teacher_defaults_exports_the_teacher_with_its_proxies(toy_2d):
    """SCDL over Mean Teacher's defaults (weak-to-strong views) exports the EMA teacher, proxies and priors included,
    and stock nnUNetv2_predict rebuilds that network and reproduces the trainer's own validation."""
    trainer, dataset = "nnUNetTrainerSCDL_meanTeacherDefaults_2epochs_3its", "Dataset502_ToySemi6"
    toy_2d.train(502, "2d", trainer, "--npz")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    semi = final["semi_state"]
    assert semi["exported"] == "teacher" and semi["global_step"] == 6
    assert "proxies.means" in final["network_weights"]
    assert any(k.startswith("prior_projections.") for k in final["network_weights"])
    assert all(torch.equal(final["network_weights"][k], v) for k, v in semi["teacher"].items())
    assert not torch.equal(semi["student"]["proxies.means"], final["network_weights"]["proxies.means"])
    assert_terms_logged(final, ("loss_consistency", "consistency_weight", "loss_e2p", "loss_p2e", "loss_sac"), 2)
    assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)


def test_2d_sra_seg_both_phases_and_predicts(toy_2d):
    trainer, dataset = "nnUNetTrainerSRASeg_effnetSA_3epochs_4its", "Dataset502_ToySemi6"
    toy_2d.train(502, "2d", trainer)
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert_terms_logged(final, ("loss_seg", "loss_sa", "domain_gap"), 3)
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
