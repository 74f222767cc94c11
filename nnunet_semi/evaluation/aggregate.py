"""From per-case metrics to the numbers of a table: per-fold means, then mean +- std over folds.

Per fold, a class's value is the mean over the fold's cases, skipping NaN (nnU-Net's ``mean`` in summary.json), and
the ``mean`` pseudo-class is the mean of the class values (nnU-Net's ``foreground_mean``), so a fold's mean Dice is
exactly what nnU-Net prints for it. Over folds (or over test-set runs, e.g. one per fold model), the table shows the
mean and the sample standard deviation (n - 1) of the per-fold values.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nnunet_semi.evaluation.folders import FoldMetrics

MEAN = "mean"


@dataclass(frozen=True)
class Stat:
    """One metric of one class over folds."""
    mean: float
    std: float  # sample standard deviation over folds; NaN with a single fold
    per_fold: dict[str, float]


Summary = dict[str, dict[str, Stat]]  # class name (and "mean") -> metric -> Stat


def _nanmean(values) -> float:
    with warnings.catch_warnings():  # an all-NaN slice is a legitimate "undefined" here
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(values, dtype=float))) if len(values) else math.nan


def fold_means(fold: FoldMetrics) -> dict[str, dict[str, float]]:
    """``{class: {metric: mean over cases}}`` plus ``{"mean": {metric: mean over classes}}`` for one fold."""
    cases = list(fold.values())
    if not cases:
        return {}
    classes = list(cases[0])
    metrics = list(cases[0][classes[0]])
    means = {c: {m: _nanmean([case[c][m] for case in cases]) for m in metrics} for c in classes}
    means[MEAN] = {m: float(np.mean([means[c][m] for c in classes])) for m in metrics}
    return means


def summarize(runs: Mapping[int | str, FoldMetrics]) -> Summary:
    """Mean and std over folds (``runs`` maps fold -> per-case metrics) of every class and metric."""
    per_fold = {str(fold): fold_means(metrics) for fold, metrics in runs.items()}
    per_fold = {fold: means for fold, means in per_fold.items() if means}
    if not per_fold:
        return {}
    first = next(iter(per_fold.values()))
    summary: Summary = {}
    for cls, metrics in first.items():
        summary[cls] = {}
        for metric in metrics:
            values = {fold: means[cls][metric] for fold, means in per_fold.items()}
            array = np.asarray(list(values.values()), dtype=float)
            summary[cls][metric] = Stat(mean=float(np.mean(array)),
                                        std=float(np.std(array, ddof=1)) if len(array) > 1 else math.nan,
                                        per_fold=values)
    return summary


def gap_closed(method_dice: float, reference_dice: float, upper_bound_dice: float, noise: float = 0.0) -> float:
    """Fraction of the reference-to-upper-bound Dice gap a method closes: (method - ref) / (upper - ref).

    0 means no better than vanilla nnU-Net on the labeled cases, 1 means as good as nnU-Net with all labels. NaN
    when a value is missing or the gap is not positive or not above ``noise`` (e.g. the reference's run-to-run
    std): dividing by such a gap gives meaningless numbers, even positive ones for methods below the reference.
    """
    gap = upper_bound_dice - reference_dice
    if not math.isfinite(gap) or gap <= max(noise, 0.0) or not math.isfinite(method_dice):
        return math.nan
    return (method_dice - reference_dice) / gap


@dataclass(frozen=True)
class PairedDifference:
    """Mean of method - reference over runs paired by fold (same seeds, folds, labels), with a 95 % t interval."""
    mean: float
    low: float
    high: float
    runs: int

    @property
    def verdict(self) -> str:
        """'better' / 'worse' only when the interval excludes 0; 'no difference shown' otherwise."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no difference shown" if math.isfinite(self.low) else "n/a (one run)"


def paired_difference(method: Stat, reference: Stat, confidence: float = 0.95) -> PairedDifference:
    """Paired difference over the folds both have: mean +- t_{(1+c)/2, n-1} * sd / sqrt(n); no interval (NaN)
    with fewer than two pairs."""
    from scipy import stats
    folds = sorted(set(method.per_fold) & set(reference.per_fold))
    differences = np.array([method.per_fold[f] - reference.per_fold[f] for f in folds], dtype=float)
    differences = differences[np.isfinite(differences)]
    if differences.size == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)
    mean = float(differences.mean())
    if differences.size < 2:
        return PairedDifference(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf((1 + confidence) / 2, differences.size - 1)
                 * differences.std(ddof=1) / math.sqrt(differences.size))
    return PairedDifference(mean, mean - half, mean + half, int(differences.size))
