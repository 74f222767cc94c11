"""Learning curves: snapshot schedule, Dice per class, test-case subset, CSV rows and plot."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunet_semi.core.snapshots import SNAPSHOT_EVERY_VARIABLE, WeightSnapshots
from nnunet_semi.core.time_limit import TimeLimitReached
from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.benchmark import default_curve_every
from nnunet_semi.evaluation.curves import CurvePoint, curve_table, dice_per_class, snapshot_files, held_out_cases
from nnunet_semi.evaluation.plots import plot_learning_curves
from nnunet_semi.evaluation.report import TrainingBudget


def test_dice_per_class_against_hand_values():
    reference = np.array([[1, 1, 2, 0], [0, 0, 2, 3]])
    prediction = np.array([[1, 0, 2, 2], [0, 0, 0, 3]])
    # label 1: TP 1, FN 1 -> 2/3; label 2: TP 1, FP 1, FN 1 -> 1/2; label 3: 1; label 4 absent from both -> NaN
    dice = dice_per_class(prediction, reference, [1, 2, 3, 4], None)
    np.testing.assert_allclose(dice[:3], [2 / 3, 1 / 2, 1.0])
    assert np.isnan(dice[3])
    # a region (1 or 2): reference {0,1,2,6}, prediction {0,2,3}: TP 2, FP 1, FN 2 -> 4/7
    np.testing.assert_allclose(dice_per_class(prediction, reference, [(1, 2)], None), [4 / 7])
    # ignore label 3 drops those voxels: label 2 has no ignored voxel, so it is unchanged; the prediction's 3 at an
    # ignored voxel is no false positive
    ignored = np.where(reference == 3, 9, reference)
    np.testing.assert_allclose(dice_per_class(prediction, ignored, [2], 9), [1 / 2])


def test_held_out_cases_take_an_evenly_spaced_subset_with_their_image_files(tmp_path: Path):
    for folder in ("imagesTs", "labelsTs"):
        (tmp_path / folder).mkdir()
    for i in range(10):
        (tmp_path / "labelsTs" / f"case_{i}.png").touch()
        (tmp_path / "imagesTs" / f"case_{i}_0000.png").touch()
    (tmp_path / "imagesTs" / "case_3_0001.png").touch()  # a second file channel for one case
    cases = held_out_cases(tmp_path / "imagesTs", tmp_path / "labelsTs", ".png", 4)
    assert [c.name for c in cases] == ["case_0", "case_3", "case_6", "case_9"]
    assert cases[0].images == (str(tmp_path / "imagesTs" / "case_0_0000.png"),)
    assert cases[1].images == (str(tmp_path / "imagesTs" / "case_3_0000.png"),
                               str(tmp_path / "imagesTs" / "case_3_0001.png"))
    assert len(held_out_cases(tmp_path / "imagesTs", tmp_path / "labelsTs", ".png", None)) == 10
    (tmp_path / "imagesTs" / "case_5_0000.png").unlink()
    with pytest.raises(UserError, match="case_5.png has no image"):
        held_out_cases(tmp_path / "imagesTs", tmp_path / "labelsTs", ".png", None)


def test_default_curve_every_gives_about_eight_points():
    assert default_curve_every(TrainingBudget(20, 50)) == 3
    assert default_curve_every(TrainingBudget(2, 2)) == 1
    assert default_curve_every(None) == 125  # nnU-Net's 1000 epochs


class _EpochCounter:
    """nnU-Net's side: on_epoch_end ends by counting the epoch; a time limit may then stop training."""

    stop_after: int | None = None

    def on_train_start(self):
        pass

    def on_epoch_end(self):
        self.current_epoch += 1
        if self.current_epoch == self.stop_after:
            raise TimeLimitReached


class _Trainer(WeightSnapshots, _EpochCounter):
    """The attributes WeightSnapshots reads."""

    def __init__(self, folder: Path, teacher: bool):
        self.output_folder, self.local_rank, self.current_epoch, self.num_epochs = str(folder), 0, 0, 7
        self.network = torch.nn.Linear(2, 1)
        self.teacher = SimpleNamespace(module=torch.nn.Linear(2, 1)) if teacher else None
        self.my_init_kwargs, self.inference_allowed_mirroring_axes = {"fold": 0}, (0,)


def test_snapshots_every_k_epochs_and_at_the_end(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(SNAPSHOT_EVERY_VARIABLE, "3")
    trainer = _Trainer(tmp_path, teacher=True)
    trainer.on_train_start()
    for _ in range(7):
        trainer.on_epoch_end()
    assert list(snapshot_files(tmp_path)) == [
        f"epoch_{e:04d}_{n}.pth" for e in (3, 6, 7) for n in ("student", "teacher")]
    saved = torch.load(tmp_path / "snapshots" / "epoch_0006_teacher.pth", weights_only=False)
    torch.testing.assert_close(saved["network_weights"]["weight"], trainer.teacher.module.weight)
    assert saved["trainer_name"] == "_Trainer" and saved["current_epoch"] == 6

    # a new training from epoch 0 in the same folder removes them; a time limit after epoch 4 still gets its
    # snapshot of the last epoch trained
    trainer = _Trainer(tmp_path, teacher=False)
    trainer.stop_after = 4
    trainer.on_train_start()
    with pytest.raises(TimeLimitReached):
        for _ in range(7):
            trainer.on_epoch_end()
    assert list(snapshot_files(tmp_path)) == ["epoch_0003_student.pth", "epoch_0004_student.pth"]


def test_no_snapshots_without_the_variable_and_bad_values_are_refused(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(SNAPSHOT_EVERY_VARIABLE, raising=False)
    trainer = _Trainer(tmp_path, teacher=False)
    trainer.on_train_start()
    trainer.on_epoch_end()
    assert not (tmp_path / "snapshots").exists()
    monkeypatch.setenv(SNAPSHOT_EVERY_VARIABLE, "0")
    with pytest.raises(ValueError, match=SNAPSHOT_EVERY_VARIABLE):
        trainer.on_train_start()


def test_curve_table_and_plot(tmp_path: Path):
    points = {0: [CurvePoint(2, "student", 0.5), CurvePoint(2, "teacher", 0.6), CurvePoint(4, "student", 0.7)],
              1: [CurvePoint(2, "student", 0.3), CurvePoint(2, "teacher", 0.4), CurvePoint(4, "student", 0.9)]}
    rows = curve_table("Mean Teacher", points, 50)
    assert rows[0] == {"row": "Mean Teacher", "network": "student", "iterations": 100, "fold": 0, "dice": 0.5}
    assert sorted({r["iterations"] for r in rows}) == [100, 200]
    rows += curve_table("vanilla", {0: [CurvePoint(4, "student", 0.6)]}, 50)
    plot_learning_curves(rows, {"Mean Teacher": "method", "vanilla": "reference"}, "iterations",
                         tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
