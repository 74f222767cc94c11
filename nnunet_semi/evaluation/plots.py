"""The report's figures, drawn on bare matplotlib Figures (no pyplot state, no display needed)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.style
import numpy as np
from matplotlib.figure import Figure

from nnunet_semi.evaluation.aggregate import Stat

ROLE_COLOURS = {"reference": "#7f7f7f", "upper_bound": "#2f2f2f"}
METHOD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


# Figures are drawn under matplotlib's default style, whatever the process set before: nnU-Net's progress plot sets
# seaborn's font_scale 2.5 for the whole process, so a report drawn after a training would have 2.5x fonts.
_matplotlib_defaults = matplotlib.style.context("default")  # a context manager that also decorates


@dataclass(frozen=True)
class Entry:
    label: str
    method: str  # rows of the same method (at several labeled fractions) share a colour
    role: str
    dice: Stat


@_matplotlib_defaults
def plot_dice_per_method(panels: Mapping[str, Sequence[Entry]], path: str | Path) -> None:
    """One panel per split: per method, the mean Dice (diamond) +- std over folds, and each fold's Dice (dots).

    Points rather than bars, so that the y axis can be zoomed to the data without truncating bars.
    """
    n_entries = max(len(entries) for entries in panels.values())
    longest = max(len(e.label) for entries in panels.values() for e in entries)
    # a label rotated by 30 degrees spans about 0.075 inch per character across and 0.035 down
    fig = Figure(figsize=(1.2 + max(0.9 * n_entries, 0.075 * longest) * len(panels), 3.4 + 0.035 * longest),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for ax, (title, entries) in zip(axes, panels.items()):
        colours = method_colours([(e.method, e.role) for e in entries])
        for i, entry in enumerate(entries):
            colour = colours[entry.method]
            ax.errorbar(i, 100 * entry.dice.mean, yerr=100 * _std(entry.dice), fmt="D", markersize=8, capsize=5,
                        color=colour)
            folds = 100 * np.asarray(list(entry.dice.per_fold.values()))
            ax.scatter(i + 0.2 + rng.uniform(-0.06, 0.06, len(folds)), folds, s=12, color=colour, alpha=0.6)
        ax.set_xticks(np.arange(len(entries)), [e.label for e in entries], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(entries) - 0.3)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("Dice (%), mean over classes")
        ax.set_title(title)
        _zoom_to_data(ax, [100 * v for e in entries for v in
                           (*e.dice.per_fold.values(), e.dice.mean - _std(e.dice), e.dice.mean + _std(e.dice))])
    fig.savefig(path, dpi=150, bbox_inches="tight")  # the first rotated label may reach past the left edge


@dataclass(frozen=True)
class FractionPanel:
    series: Mapping[str, Sequence[tuple[float, Stat]]]  # method name -> (labeled fraction, Dice) points
    reference: str | None  # the method name of the reference rows
    upper_bound: Stat | None


@_matplotlib_defaults
def plot_dice_vs_labeled_fraction(panels: Mapping[str, FractionPanel], path: str | Path) -> None:
    """One panel per split: mean Dice +- std against the labeled fraction, one line per method, and the upper
    bound (all labels) as a dashed line."""
    fig = Figure(figsize=(0.5 + 5.5 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, panel) in zip(axes, panels.items()):
        colours = method_colours([(name, "reference" if name == panel.reference else "method")
                                  for name in panel.series])
        for name, points in panel.series.items():
            points = sorted(points, key=lambda p: p[0])
            ax.errorbar([100 * f for f, _ in points], [100 * s.mean for _, s in points],
                        yerr=[100 * _std(s) for _, s in points],
                        marker="o", capsize=3, label=name, color=colours[name])
        if panel.upper_bound is not None:
            ax.axhline(100 * panel.upper_bound.mean, color=ROLE_COLOURS["upper_bound"], linestyle="--",
                       label="all labels (upper bound)")
        ax.set_xlabel("labeled cases (%)")
        ax.set_ylabel("Dice (%), mean over classes")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=150)


def _std(stat: Stat) -> float:
    """The std to draw: none with a single fold."""
    return stat.std if np.isfinite(stat.std) else 0.0


def method_colours(methods: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``{method name: colour}`` from (name, role) pairs: grey shades for the reference and the upper bound, the
    palette in order of appearance for the other methods."""
    colours: dict[str, str] = {}
    palette = iter(METHOD_COLOURS * (1 + len(methods) // len(METHOD_COLOURS)))
    for name, role in methods:
        if name not in colours:
            colours[name] = ROLE_COLOURS[role] if role in ROLE_COLOURS else next(palette)
    return colours


def _zoom_to_data(ax, values: Sequence[float]) -> None:
    """Fit the y axis to the values drawn, so that differences of a few Dice points stay visible."""
    finite = [v for v in values if np.isfinite(v)]
    if finite:
        margin = max(1.0, 0.1 * (max(finite) - min(finite)))
        ax.set_ylim(max(0.0, min(finite) - margin), max(finite) + margin)


@_matplotlib_defaults
def plot_learning_curves(points: Sequence[Mapping], roles: Mapping[str, str], iterations_label: str,
                         path: str | Path) -> None:
    """Test Dice against training iterations: per row (colour) and network (student solid, EMA teacher dashed),
    the mean over folds with a band of +- std (at the iterations that every fold reached; no band with one fold);
    ``points`` are dicts with row, network, iterations, fold, dice."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    colours = method_colours([(row, role) for row, role in roles.items()])
    for (row, network), series in _group(points, ("row", "network")).items():
        by_iterations = _group(series, ("iterations",))
        folds = {p["fold"] for p in series}
        # only iterations that every fold reached, so that the mean does not jump where a fold stopped early
        x = np.array(sorted(k[0] for k, v in by_iterations.items() if {p["fold"] for p in v} == folds))
        values = [np.array([p["dice"] for p in by_iterations[(i,)] if np.isfinite(p["dice"])]) for i in x]
        mean = 100 * np.array([v.mean() if v.size else np.nan for v in values])
        std = 100 * np.array([v.std(ddof=1) if v.size > 1 else np.nan for v in values])  # no band below 2 folds
        style = "-" if network == "student" else "--"
        ax.plot(x, mean, style, marker="o", markersize=3, color=colours[row],
                label=row if network == "student" else f"{row}, EMA teacher")
        ax.fill_between(x, mean - std, mean + std, color=colours[row], alpha=0.12)
    ax.set_xlabel(iterations_label)
    ax.set_ylabel("test Dice (%), mean over classes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=150)


def _group(items: Sequence[Mapping], keys: Sequence[str]) -> dict[tuple, list[Mapping]]:
    groups: dict[tuple, list[Mapping]] = {}
    for item in items:
        groups.setdefault(tuple(item[k] for k in keys), []).append(item)
    return groups
