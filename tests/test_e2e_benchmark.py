"""End to end through the unmodified nnU-Net commands: nnunet-semi benchmark (toy workspaces: tests/e2e_support.py)."""
from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from e2e_support import cli, run

pytestmark = pytest.mark.e2e


def test_benchmark_trains_evaluates_and_reports(toy_2d):
    output = toy_2d.root / "benchmark"
    # the upper-bound row (one more training) is covered by tests/test_benchmark_rows.py and the report tests;
    # a time limit that has passed at once stops every training after its first epoch, with nnU-Net's final
    # checkpoint, validation and a prediction all the same
    command = cli("benchmark", "502", "-tr", "nnUNetTrainerMeanTeacher", "-f", "0", "--budget", "2x2", "-o",
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
    # learning curves (default: a snapshot every ceil(2 / 8) = 1 epoch): the student of both rows, the teacher of
    # Mean Teacher, evaluated on the test set and cached per fold
    mean_teacher = toy_2d.fold_dir("Dataset502_ToySemi6", "nnUNetTrainerMeanTeacher_2epochs_2its", "2d")
    assert sorted(p.name for p in (mean_teacher / "snapshots").iterdir()) == [
        "epoch_0001_student.pth", "epoch_0001_teacher.pth"]
    with open(output / "learning_curves.csv") as f:
        curve = sorted((r["row"], r["network"], r["iterations"]) for r in csv.DictReader(f))
    assert curve == [("nnU-Net (labeled only)", "student", "2"), ("nnUNetTrainerMeanTeacher", "student", "2"),
                     ("nnUNetTrainerMeanTeacher", "teacher", "2")]
    assert (output / "learning_curves.png").is_file() and "Learning curves:" in shown.stdout
    assert set(json.loads((output / "curves" / "Dataset502_ToySemi6" / "nnUNetTrainerMeanTeacher_2epochs_2its" /
                           "fold_0.json").read_text())["snapshots"]) == {"epoch_0001_student.pth",
                                                                          "epoch_0001_teacher.pth"}

    # everything is there now: --no-train only evaluates (folds a time limit stopped count as done only under a
    # time limit), here after nnU-Net's postprocessing, determined on each fold's validation; outputs older than
    # what they derive from are made again, the others kept: here a retrained vanilla fold (when rules are made
    # again: tests/test_benchmark_rows.py); a missing training is an error and keeps the report
    def written(pattern: str) -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in output.glob(pattern)}
    kept = written("test_predictions/*/nnUNetTrainerMeanTeacher*/fold_0/*.png")
    retrained = [vanilla / "checkpoint_final.pth", vanilla / "validation" / "summary.json"]
    for path in retrained:
        os.utime(path)
    retrained_at = max(p.stat().st_mtime_ns for p in retrained)
    before = (output / "report.md").stat().st_mtime
    run(command + ["--no-train", "--postprocess"], toy_2d.env)
    assert (output / "report.md").stat().st_mtime > before
    assert "then nnU-Net's postprocessing" in (output / "report.md").read_text()
    assert (vanilla / "validation" / "postprocessing.pkl").is_file()
    assert not (vanilla / "validation" / "postprocessed").exists()
    assert len(list(output.glob("test_predictions_postprocessed/*/*/fold_0/*.png"))) == 2 * 5
    remade = written("test_predictions/Dataset503_ToySemi6Labeled/*/fold_0/*.png")
    assert len(remade) == 5 and min(remade.values()) >= retrained_at
    assert written("test_predictions/*/nnUNetTrainerMeanTeacher*/fold_0/*.png") == kept
    for flags in (["-tr", "nnUNetTrainerSRASeg", "--time-limit", "1"], ["-tr", "nnUNetTrainerMeanTeacher"]):
        failing = subprocess.run(cli("benchmark", "502", "-f", "0", "--budget", "2x2", "-o", str(output),
                                      "--no-train", *flags), env=toy_2d.env, capture_output=True, text=True)
        assert failing.returncode == 2 and "--no-train given but" in failing.stderr
    assert "nnUNetTrainerSRASeg" not in (output / "report.md").read_text()
