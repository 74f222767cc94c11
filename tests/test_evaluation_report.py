"""Aggregation over cases, classes and folds, and the report builder (tables, gap closed, timing, plots, files)."""
import csv
import math
import warnings

import matplotlib
import pytest
import seaborn

from nnunet_semi.errors import UserError
from nnunet_semi.evaluation import report
from nnunet_semi.evaluation.aggregate import Stat, fold_means, gap_closed, paired_difference, summarize
from nnunet_semi.evaluation.plots import Entry, plot_dice_per_method
from nnunet_semi.evaluation.report import MethodResults, ReportSettings, TrainingBudget, load_report_json, write_report

CLASSES = ("RV", "MYO", "LV")


def uniform_fold(dice: float, hd95: float = 3.0, cases: int = 2) -> dict:
    """A fold whose every case and class has the same Dice and HD95."""
    return {f"case{i}": {c: {"Dice": dice, "HD95": hd95} for c in CLASSES} for i in range(cases)}


def rows_of(path):
    with open(path) as f:
        return {(row["method"], row["labeled_fraction"]): row for row in csv.DictReader(f)}


def acdc_rows(fraction=0.1, vanilla=(0.6, 0.7), semi=(0.8, 0.8)):
    budget = TrainingBudget(epochs=2, iterations_per_epoch=5)
    return [
        MethodResults("nnU-Net", cv={0: uniform_fold(vanilla[0]), 1: uniform_fold(vanilla[1])},
                      seconds_per_iteration=1.0, budget=budget, labeled_fraction=fraction, role="reference"),
        MethodResults("Semi", cv={0: uniform_fold(semi[0]), 1: uniform_fold(semi[1])},
                      seconds_per_iteration=1.5, budget=budget, labeled_fraction=fraction),
    ]


UPPER_BOUND = MethodResults("nnU-Net all labels", cv={0: uniform_fold(0.9), 1: uniform_fold(0.9)},
                            seconds_per_iteration=1.0, labeled_fraction=1.0, role="upper_bound")


def test_fold_means_skip_nan_cases_then_average_classes():
    fold = {"a": {"RV": {"Dice": 0.6}, "MYO": {"Dice": 0.5}, "LV": {"Dice": 0.9}},
            "b": {"RV": {"Dice": 0.8}, "MYO": {"Dice": 0.5}, "LV": {"Dice": math.nan}}}
    means = fold_means(fold)
    assert means["RV"]["Dice"] == pytest.approx(0.7)
    assert means["LV"]["Dice"] == pytest.approx(0.9)  # the NaN case is skipped, as nnU-Net does
    assert means["mean"]["Dice"] == pytest.approx((0.7 + 0.5 + 0.9) / 3)


def test_summary_is_mean_and_sample_std_over_folds():
    stat = summarize({0: uniform_fold(0.6), 1: uniform_fold(0.7)})["mean"]["Dice"]
    assert stat.mean == pytest.approx(0.65)
    assert stat.std == pytest.approx(math.sqrt(2 * 0.05 ** 2 / 1))
    assert stat.per_fold == pytest.approx({"0": 0.6, "1": 0.7})
    assert math.isnan(summarize({0: uniform_fold(0.6)})["mean"]["Dice"].std)


def test_gap_closed():
    assert gap_closed(0.8, 0.65, 0.9) == pytest.approx(0.6)
    assert math.isnan(gap_closed(0.8, 0.9, 0.9))
    # the demo's case: upper bound below the reference; never a number, least of all a positive one for a row
    # below the reference (vanilla 96.91, Mean Teacher 96.73, all labels 96.50 printed 43 %)
    assert math.isnan(gap_closed(0.9673, 0.9691, 0.9650))
    assert math.isnan(gap_closed(0.80, 0.79, 0.80, noise=0.02))  # a gap within the runs' noise


def test_report_tables_gap_and_time(tmp_path):
    files = write_report([*acdc_rows(), UPPER_BOUND], tmp_path, ReportSettings(title="ACDC 10%",
                                                                                details={"Dataset": "ACDC"}))
    rows = rows_of(files.csv)
    semi = rows["Semi", "0.1"]
    assert float(semi["Dice/mean/mean"]) == pytest.approx(0.8)
    assert float(semi["dice_gap_closed"]) == pytest.approx((0.8 - 0.65) / (0.9 - 0.65))
    assert float(semi["time_vs_reference"]) == pytest.approx(1.5)
    assert semi["budget"] == "2 epochs x 5 it"
    assert float(rows["nnU-Net", "0.1"]["Dice/RV/std"]) == pytest.approx(math.sqrt(2 * 0.05 ** 2))
    markdown = files.markdown.read_text()
    # paired by fold: differences 0.2 and 0.1, t(0.975, 1) = 12.706 -> 15.00 +- 63.53 Dice points, no verdict
    assert ("| Semi | 10% | 2 epochs x 5 it | 2 | 80.00 ± 0.00 | 3.00 ± 0.00 | +15.00 [-48.53, +78.53] | 60.0% | 1.5 "
            "| 1.50x |") in markdown
    assert semi["dice_vs_reference_verdict"] == "no difference shown"
    assert "**HD95 (mm)**" in markdown and "| Method | RV | MYO | LV | mean |" in markdown
    assert [p.name for p in files.plots] == ["dice_per_method.png"]
    assert all(p.stat().st_size > 0 for p in files.plots)


def test_report_json_reloads_into_the_same_report(tmp_path):
    first = write_report([*acdc_rows(), UPPER_BOUND], tmp_path / "a")
    second = write_report(load_report_json(first.json), tmp_path / "b")
    assert second.csv.read_text() == first.csv.read_text()


def test_several_labeled_fractions_compare_with_their_own_reference(tmp_path):
    methods = [*acdc_rows(0.1), *acdc_rows(0.2, vanilla=(0.7, 0.7), semi=(0.85, 0.85)), UPPER_BOUND]
    files = write_report(methods, tmp_path)
    assert float(rows_of(files.csv)["Semi", "0.2"]["dice_gap_closed"]) == pytest.approx((0.85 - 0.7) / (0.9 - 0.7))
    assert (tmp_path / "dice_vs_labeled_fraction.png").is_file()
    assert "| Semi (20%) |" in files.markdown.read_text()
    write_report([*acdc_rows(0.1), UPPER_BOUND], tmp_path)  # one fraction: the older fraction plot goes away
    assert not (tmp_path / "dice_vs_labeled_fraction.png").exists()


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_bad_rows_are_refused_and_the_complete_report_stays(tmp_path):
    write_report([*acdc_rows(), UPPER_BOUND], tmp_path)
    before = snapshot(tmp_path)
    missing_fold = MethodResults("Partial", cv={0: uniform_fold(0.8)}, labeled_fraction=0.1)
    with pytest.raises(UserError, match="different folds"):
        write_report([*acdc_rows(), missing_fold], tmp_path)
    with pytest.raises(UserError, match="one upper-bound"):
        write_report([*acdc_rows(), UPPER_BOUND, MethodResults("Other", cv=UPPER_BOUND.cv, role="upper_bound")],
                     tmp_path)
    other_classes = MethodResults("Binary", cv={f: {"c": {"x": {"Dice": 1.0, "HD95": 0.0}}} for f in (0, 1)})
    with pytest.raises(UserError, match="same classes"):
        write_report([*acdc_rows(), other_classes], tmp_path)
    with pytest.raises(UserError, match="once per labeled fraction"):
        write_report([*acdc_rows(), acdc_rows()[1]], tmp_path)
    assert snapshot(tmp_path) == before


def test_a_crash_while_writing_keeps_the_previous_report(tmp_path, monkeypatch):
    write_report([*acdc_rows(), UPPER_BOUND], tmp_path)
    before = snapshot(tmp_path)

    def broken_plot(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report, "plot_dice_per_method", broken_plot)
    with pytest.raises(RuntimeError):
        write_report(acdc_rows(semi=(0.1, 0.1)), tmp_path)
    assert snapshot(tmp_path) == before  # no staging folder left either


def test_report_shows_na_when_the_upper_bound_is_not_above_the_reference(tmp_path):
    low_upper = MethodResults("nnU-Net all labels", cv={0: uniform_fold(0.6)}, labeled_fraction=1.0,
                              role="upper_bound")
    methods = [MethodResults("nnU-Net", cv={0: uniform_fold(0.7)}, role="reference", labeled_fraction=0.1),
               MethodResults("Semi", cv={0: uniform_fold(0.65)}, labeled_fraction=0.1), low_upper]
    markdown = write_report(methods, tmp_path).markdown.read_text()
    semi_row = next(line for line in markdown.splitlines() if line.startswith("| Semi |"))
    assert semi_row.split("|")[-2].strip() == "n/a"  # the last column: gap closed
    assert "Gap closed is n/a where the all-labels upper bound" in markdown
    assert "one run, no std: validation folds 0." in markdown and "(0)" not in markdown


def test_paired_difference_hand_values_and_verdicts():
    def stat(values):
        return Stat(mean=math.nan, std=math.nan, per_fold={str(i): v for i, v in enumerate(values)})
    reference = stat([0.78, 0.79, 0.80])
    unclear = paired_difference(stat([0.80, 0.82, 0.85]), reference)  # differences .02 .03 .05
    sd = math.sqrt(((0.02 - 0.1 / 3) ** 2 + (0.03 - 0.1 / 3) ** 2 + (0.05 - 0.1 / 3) ** 2) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2)
    assert unclear.mean == pytest.approx(0.1 / 3) and unclear.runs == 3
    assert (unclear.low, unclear.high) == pytest.approx((0.1 / 3 - half, 0.1 / 3 + half), abs=1e-6)
    assert unclear.verdict == "no difference shown"
    better = paired_difference(stat([0.80, 0.82, 0.825]), reference)  # .02 .03 .025: half = 4.3027 * .005 / 1.732
    assert (better.low, better.high) == pytest.approx((0.025 - 0.012421, 0.025 + 0.012421), abs=1e-5)
    assert better.verdict == "better"
    assert paired_difference(stat([0.70, 0.71, 0.72]), reference).verdict == "worse"
    assert paired_difference(stat([0.9]), stat([0.8])).verdict == "n/a (one run)"


def test_dice_plot_leaves_room_for_one_long_method_name(tmp_path):
    """One method with a long name (as ``nnunet-semi evaluate`` names a run), drawn after a training in the same
    process has set seaborn's font scale 2.5 (nnU-Net's progress plot does): the rotated label gets room, and
    matplotlib's constrained layout does not collapse the axes (it warns when it does)."""
    entry = Entry("nnUNetTrainerSCDL_meanTeacherDefaults_f0", "nnUNetTrainerSCDL_meanTeacherDefaults_f0", "method",
                  Stat(0.5654, math.nan, {"0": 0.5654}))
    with matplotlib.rc_context(), warnings.catch_warnings():
        seaborn.set(font_scale=2.5)  # as nnunetv2.training.logging.nnunet_logger.plot_progress_png
        warnings.simplefilter("error")
        plot_dice_per_method({"Test set": [entry]}, tmp_path / "dice.png")
    assert (tmp_path / "dice.png").stat().st_size > 0
