"""End to end through the unmodified nnU-Net commands: Mean Teacher, and a trainer written only against the
core's extension points.

Toy workspaces and helpers: tests/e2e_support.py.
"""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from e2e_support import assert_stock_prediction_matches_validation, assert_terms_logged, kill_after_checkpoint, run

pytestmark = pytest.mark.e2e


def test_2d_mean_teacher_trains_resumes_and_predicts(toy_2d):
    trainer, dataset = "nnUNetTrainerMeanTeacher_resumable", "Dataset502_ToySemi6"
    fold_dir = toy_2d.fold_dir(dataset, trainer, "2d")
    interrupted = kill_after_checkpoint(toy_2d, 502, "2d", trainer, fold_dir)
    assert interrupted["current_epoch"] < 4 and not (fold_dir / "checkpoint_final.pth").exists()
    assert interrupted["semi_state"]["global_step"] == 3 * interrupted["current_epoch"]

    toy_2d.train(502, "2d", trainer, "--c")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["trainer_name"] == trainer and final["current_epoch"] == 4
    assert final["semi_state"]["global_step"] == 4 * 3  # the step counter continued where it stopped
    assert set(final["semi_state"]["teacher"]) == set(final["network_weights"])
    assert_terms_logged(final, ("loss_supervised", "loss_consistency", "consistency_weight", "confident_fraction",
                                "train_losses"), 4)
    assert np.all(np.isfinite(final["logging"]["loss_consistency"]))
    assert final["logging"]["confident_fraction"] == [1.0] * 4  # threshold 0 by default: every voxel
    newest_log = max(fold_dir.glob("training_log_*.txt"), key=os.path.getmtime).read_text()
    assert f"Epoch {interrupted['current_epoch']}" in newest_log and "Epoch 0\n" not in newest_log
    assert final["semi_state"]["settings"] == {"exported_network": "teacher", "unlabeled_weak_views": 1,
                                               "teacher_noise_std": 0.0}
    assert "WARNING: this run was started with" not in newest_log  # resumed with the settings it started with
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert 0 <= summary["foreground_mean"]["Dice"] <= 1

    images, predictions = toy_2d.predict_test_set(dataset, 502, "2d", trainer)
    predicted = sorted(predictions.glob("*.png"))
    assert len(predicted) == len(list(images.glob("*.png"))) > 0
    assert set(np.unique(np.asarray(Image.open(predicted[0])))) <= {0, 1, 2}


def test_ema_trains_where_vanilla_does_and_exports_its_average(toy_2d):
    """nnUNetTrainerEMA on the labeled-only twin, a dataset without unlabeled cases: nnU-Net's own split, the weight
    average exported, validated and used by stock nnUNetv2_predict."""
    trainer, dataset = "nnUNetTrainerEMA_2epochs_3its", "Dataset503_ToySemi6Labeled"
    toy_2d.train(503, "2d", trainer, "--npz")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    semi = final["semi_state"]
    assert final["current_epoch"] == 2 and semi["global_step"] == 6
    assert semi["exported"] == "teacher" and semi["settings"] == {"exported_network": "teacher"}
    assert all(torch.equal(final["network_weights"][k], v) for k, v in semi["teacher"].items())
    assert any(not torch.equal(semi["student"][k], v) for k, v in semi["teacher"].items())  # an average, not a copy
    splits = json.loads((toy_2d.folders["nnUNet_preprocessed"] / dataset / "splits_final.json").read_text())
    validated = sorted(p.name[:-len(".png")] for p in (toy_2d.fold_dir(dataset, trainer, "2d") / "validation").glob(
        "*.png"))
    assert validated == sorted(splits[0]["val"])  # nnU-Net's fold, unchanged
    assert_stock_prediction_matches_validation(toy_2d, dataset, 503, trainer)


def test_cutmix_pseudo_label_variant_trains_and_stock_predict_uses_its_teacher(toy_2d):
    """``_cutMixClassBalancedOrConfidentPseudoLabels_runningThresholds`` (CutMix, the hard pseudo-label loss, its
    per-class thresholds capped at 0.95 and kept as running estimates; the masks are unit-tested) through
    nnUNetv2_train on the semi-supervised toy dataset: a finite consistency term on the mixed views, some voxels
    kept, one running threshold per class in the checkpoint, and stock nnUNetv2_predict giving what its final
    validation (the exported teacher) predicted."""
    trainer = "nnUNetTrainerMeanTeacher_cutMixClassBalancedOrConfidentPseudoLabels_runningThresholds_2epochs_3its"
    dataset = "Dataset502_ToySemi6"
    toy_2d.train(502, "2d", trainer, "--npz")
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["current_epoch"] == 2 and final["semi_state"]["exported"] == "teacher"
    assert_terms_logged(final, ("loss_supervised", "loss_consistency", "confident_fraction"), 2)
    assert np.all(np.isfinite(final["logging"]["loss_consistency"]))
    assert all(0 < kept <= 1 for kept in final["logging"]["confident_fraction"])
    thresholds = final["semi_state"]["class_thresholds"]
    assert thresholds["values"].shape == (3,)  # background and two classes
    seen = thresholds["values"][~thresholds["values"].isnan()]
    assert len(seen) > 0 and bool(((seen > 0) & (seen <= 1)).all())
    assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)


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

    run(["nnUNetv2_train", "502", "2d", "0", "-tr", trainer, "-device", "cpu", "--c", "--npz"],
         {**toy_2d.env, "TOY_RECORD": str(record)})
    resumed = torch.load(record, weights_only=False)
    assert resumed["global_step"] == 2
    for name, saved in (("projection", semi["extra_modules"]["projection"]), ("teacher", semi["teacher"]),
                        ("student", semi["student"])):
        assert set(resumed[name]) == set(saved) and all(torch.equal(resumed[name][k], v) for k, v in saved.items())
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["current_epoch"] == 3 and final["semi_state"]["global_step"] == 6
    assert_terms_logged(final, ("loss_aux", "loss_consistency"), 3)
    groups = final["optimizer_state"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.5 * groups[0]["lr"])
    assert len(groups[0]["params"]) == resumed["trainable_network_parameters"]  # no frozen tensor optimised
    assert not torch.equal(final["semi_state"]["student"]["class_bias"], final["network_weights"]["class_bias"])

    assert_stock_prediction_matches_validation(toy_2d, dataset, 502, trainer)  # teacher exported

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
