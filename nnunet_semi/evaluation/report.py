"""The benchmark report: Markdown and CSV tables, a JSON with every number, and PNG plots, from per-case metrics.

A caller (``nnunet-semi benchmark``, ``nnunet-semi evaluate``) hands :func:`write_report` one :class:`MethodResults`
per row: per-fold per-case metrics of the cross-validation and, optionally, of a held-out test set, the training
time per iteration, the training budget, the labeled fraction, and its role: vanilla nnU-Net on the labeled cases
only is the ``reference`` row, nnU-Net on the fully labeled dataset the ``upper_bound`` row.

Tables show mean +- std over folds (:mod:`nnunet_semi.evaluation.aggregate`), the fraction of the
reference-to-upper-bound Dice gap each row closes, and its time per iteration relative to the reference. Rows are
compared with the reference of the same labeled fraction (or with the only reference there is).

Files are written to a staging folder first and moved into place only once all of them exist, each with an atomic
``os.replace``: a failure (bad input, a crash while plotting) leaves any earlier report untouched.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_semi.core.time_limit import peak_gpu_memory_mib, stopped_folds
from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.aggregate import (
    MEAN,
    PairedDifference,
    Stat,
    Summary,
    gap_closed,
    paired_difference,
    summarize,
)
from nnunet_semi.evaluation.folders import FoldMetrics
from nnunet_semi.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, DEFINITIONS, DISTANCE_UNIT, MODES
from nnunet_semi.evaluation.plots import Entry, FractionPanel, plot_dice_per_method, plot_dice_vs_labeled_fraction

ROLES = ("reference", "method", "upper_bound")
SPLITS = {"cv": "Cross-validation", "test": "Test set"}
MARKDOWN, CSV, JSON = "report.md", "report.csv", "report.json"
DICE_PLOT, FRACTION_PLOT = "dice_per_method.png", "dice_vs_labeled_fraction.png"
PERCENT_METRICS = ("Dice", "IoU", "NSD")


@dataclass(frozen=True)
class TrainingBudget:
    """The same number of epochs x iterations applied to every trainer (short CPU runs, quick studies)."""
    epochs: int
    iterations_per_epoch: int

    def __str__(self) -> str:
        return f"{self.epochs} epochs x {self.iterations_per_epoch} it"


@dataclass
class MethodResults:
    """One row of the report. ``cv`` and ``test`` map a fold (or a run name such as ``'ensemble'``) to the
    per-case metrics of :func:`nnunet_semi.evaluation.folders.evaluate_folder`."""
    name: str
    cv: Mapping[int | str, FoldMetrics] = field(default_factory=dict)
    test: Mapping[int | str, FoldMetrics] = field(default_factory=dict)
    seconds_per_iteration: float | None = None
    budget: TrainingBudget | None = None  # None: nnU-Net's own schedule
    labeled_fraction: float | None = None
    role: str = "method"  # one of ROLES
    training: Mapping[int | str, dict] = field(default_factory=dict)  # per fold: training_summary.json


@dataclass
class ReportSettings:
    title: str = "Benchmark"
    mode: str = "nnunet"  # how the metrics were computed, see nnunet_semi.evaluation.metrics
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    details: Mapping[str, str] = field(default_factory=dict)  # dataset, configuration, plans, device ...


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    json: Path
    plots: tuple[Path, ...]


@dataclass(frozen=True)
class Row:
    """One method's numbers in one split."""
    method: MethodResults
    summary: Summary
    gap_closed: float
    time_ratio: float  # seconds per iteration / the reference's
    cases: int
    versus_reference: PairedDifference | None = None  # mean Dice, paired by fold; None for the reference itself


def write_report(methods: Sequence[MethodResults], output_folder: str | Path,
                 settings: ReportSettings | None = None) -> ReportFiles:
    """Write report.md, report.csv, report.json and the PNG plots into ``output_folder``; return their paths."""
    settings = settings or ReportSettings()
    _validate(methods, settings)
    tables = {split: build_rows(methods, split) for split in SPLITS}
    tables = {split: rows for split, rows in tables.items() if rows}
    texts = {MARKDOWN: render_markdown(tables, settings), CSV: render_csv(tables),
             JSON: render_json(methods, tables, settings)}
    plots: dict[str, Callable[[Path], None]] = {
        DICE_PLOT: lambda path: plot_dice_per_method(_dice_panels(tables), path)}
    fraction_panels = _fraction_panels(tables)
    if fraction_panels:
        plots[FRACTION_PLOT] = lambda path: plot_dice_vs_labeled_fraction(fraction_panels, path)
    written = _publish(Path(output_folder), texts, plots)
    return ReportFiles(markdown=written[MARKDOWN], csv=written[CSV], json=written[JSON],
                       plots=tuple(written[name] for name in plots))


# ----------------------------------------------------------------------------------------------------------------
# checks and numbers
# ----------------------------------------------------------------------------------------------------------------

def _validate(methods: Sequence[MethodResults], settings: ReportSettings) -> None:
    if settings.mode not in MODES:
        raise UserError(f"Unknown metric mode '{settings.mode}': choose one of {', '.join(MODES)}.")
    if not methods:
        raise UserError("Nothing to report: no method results were given.")
    for m in methods:
        if m.role not in ROLES:
            raise UserError(f"Method '{m.name}' has role '{m.role}'; roles are {', '.join(ROLES)}.")
        if not _non_empty(m.cv) and not _non_empty(m.test):
            raise UserError(f"Method '{m.name}' has no evaluated case: check its predictions.")
    _check_unique([f"{m.name} ({_format_fraction(m.labeled_fraction) or 'no fraction'})" for m in methods],
                  "Each method may appear once per labeled fraction")
    _check_unique([_format_fraction(m.labeled_fraction) or "no fraction" for m in methods if m.role == "reference"],
                  "Only one reference row is allowed per labeled fraction")
    upper_bounds = [m.name for m in methods if m.role == "upper_bound"]
    if len(upper_bounds) > 1:
        raise UserError(f"Only one upper-bound row is allowed, got {', '.join(upper_bounds)}.")
    for split in SPLITS:
        _check_same_folds([m for m in methods if getattr(m, split)], split)
    _check_same_classes_and_metrics(methods)


def _non_empty(runs: Mapping[int | str, FoldMetrics]) -> dict[int | str, FoldMetrics]:
    return {fold: cases for fold, cases in runs.items() if cases}


def _check_unique(keys: list[str], rule: str) -> None:
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise UserError(f"{rule}; repeated: {', '.join(duplicates)}.")


def _check_same_folds(methods: Sequence[MethodResults], split: str) -> None:
    """Rows are only comparable over the same folds: a missing fold must be finished, not silently dropped."""
    folds = {m.name: sorted(map(str, getattr(m, split))) for m in methods}
    if len({tuple(f) for f in folds.values()}) > 1:
        listing = "; ".join(f"{name}: {', '.join(f) or 'none'}" for name, f in folds.items())
        raise UserError(f"{SPLITS[split]} results cover different folds ({listing}). Finish (or leave out) the "
                        f"missing folds so that every row is measured on the same folds.")


def _check_same_classes_and_metrics(methods: Sequence[MethodResults]) -> None:
    layouts = {}
    for m in methods:
        for runs in (m.cv, m.test):
            for cases in runs.values():
                for case in cases.values():
                    layouts.setdefault(tuple((c, tuple(v)) for c, v in case.items()), m.name)
    if len(layouts) > 1:
        names = ", ".join(sorted(set(layouts.values())))
        raise UserError(f"The results do not share the same classes and metrics (rows {names}): compare methods "
                        f"of the same dataset labels, evaluated in the same metric mode.")


def build_rows(methods: Sequence[MethodResults], split: str) -> list[Row]:
    """The rows of one split, references first and the upper bound last within each labeled fraction."""
    with_results = [m for m in methods if _non_empty(getattr(m, split))]
    summaries = {id(m): summarize(_non_empty(getattr(m, split))) for m in with_results}
    upper = next((m for m in with_results if m.role == "upper_bound"), None)
    rows = []
    for m in sorted(with_results, key=_row_order):
        reference = _reference_for(m, with_results)
        dice = _mean_dice(summaries[id(m)])
        rows.append(Row(
            method=m, summary=summaries[id(m)],
            gap_closed=(gap_closed(dice, _mean_dice(summaries[id(reference)]), _mean_dice(summaries[id(upper)]),
                                   _dice_std(summaries[id(reference)]))
                        if reference is not None and upper is not None else math.nan),
            time_ratio=_ratio(m.seconds_per_iteration, reference.seconds_per_iteration if reference else None),
            cases=len({case for cases in getattr(m, split).values() for case in cases}),
            versus_reference=(paired_difference(summaries[id(m)][MEAN]["Dice"], summaries[id(reference)][MEAN]["Dice"])
                              if reference is not None and reference is not m and MEAN in summaries[id(m)]
                              and MEAN in summaries[id(reference)] else None),
        ))
    return rows


def _row_order(m: MethodResults) -> tuple:
    fraction = m.labeled_fraction if m.labeled_fraction is not None else math.inf
    return (m.role == "upper_bound", fraction, ROLES.index(m.role))


def _reference_for(method: MethodResults, candidates: Sequence[MethodResults]) -> MethodResults | None:
    """The reference row of the same labeled fraction, or the only reference row."""
    references = [m for m in candidates if m.role == "reference"]
    same_fraction = [m for m in references if m.labeled_fraction == method.labeled_fraction]
    if same_fraction:
        return same_fraction[0]
    return references[0] if len(references) == 1 else None


def _mean_dice(summary: Summary) -> float:
    return summary[MEAN]["Dice"].mean if MEAN in summary else math.nan


def _dice_std(summary: Summary) -> float:
    """The run-to-run std of the mean Dice (0 with a single run)."""
    std = summary[MEAN]["Dice"].std if MEAN in summary else math.nan
    return std if math.isfinite(std) else 0.0


def _ratio(value: float | None, reference: float | None) -> float:
    return value / reference if value is not None and reference else math.nan


# ----------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------

def _classes_and_metrics(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    summary = rows[0].summary
    return list(summary), list(summary[MEAN])


def _metric_header(metric: str, settings: ReportSettings) -> str:
    if metric in PERCENT_METRICS:
        tolerance = f"@{settings.nsd_tolerance_mm:g}mm" if metric == "NSD" else ""
        return f"{metric}{tolerance} (%)"
    return f"{metric} ({DISTANCE_UNIT[settings.mode]})"


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def _format_stat(stat: Stat, metric: str) -> str:
    mean, std = stat.mean * _scale(metric), stat.std * _scale(metric)
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"


def _format_fraction(fraction: float | None) -> str:
    return "" if fraction is None else f"{100 * fraction:g}%"


def _label(row: Row, several_fractions: bool) -> str:
    fraction = _format_fraction(row.method.labeled_fraction)
    return f"{row.method.name} ({fraction})" if several_fractions and fraction else row.method.name


def _several_fractions(rows: Sequence[Row]) -> bool:
    return len({r.method.labeled_fraction for r in rows if r.method.role != "upper_bound"}) > 1


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body)]


def _summary_table(rows: Sequence[Row], settings: ReportSettings) -> list[str]:
    _, metrics = _classes_and_metrics(rows)
    optional = {
        "Labeled": ([_format_fraction(r.method.labeled_fraction) for r in rows],
                    any(r.method.labeled_fraction is not None for r in rows)),
        "Budget": ([str(r.method.budget or "nnU-Net default") for r in rows], any(r.method.budget for r in rows)),
        "Δ Dice vs reference (95% CI)": ([_paired(r.versus_reference) for r in rows],
                                         any(r.versus_reference is not None for r in rows)),
        "Gap closed": ([_percent(r.gap_closed) or "n/a" for r in rows], _has_upper_bound(rows)),
        "s / it": ([_number(r.method.seconds_per_iteration) for r in rows],
                   any(r.method.seconds_per_iteration for r in rows)),
        "Time vs reference": ([_times(r.time_ratio) for r in rows], any(math.isfinite(r.time_ratio) for r in rows)),
        "Peak GPU MiB": ([f"{peak_gpu_memory_mib(r.method.training.values()) or 0:.0f}" for r in rows],
                         any(peak_gpu_memory_mib(r.method.training.values()) for r in rows)),
        "Stopped early": ([_stopped_early(r.method) for r in rows], any(_stopped_early(r.method) for r in rows)),
    }
    shown = {name: values for name, (values, show) in optional.items() if show}
    leading = [name for name in ("Labeled", "Budget") if name in shown]
    trailing = [name for name in ("Δ Dice vs reference (95% CI)", "Gap closed", "s / it", "Time vs reference",
                                  "Peak GPU MiB", "Stopped early") if name in shown]
    header = ["Method", *leading, "Cases", *(_metric_header(m, settings) for m in metrics), *trailing]
    body = [[r.method.name, *(shown[name][i] for name in leading), str(r.cases),
             *(_format_stat(r.summary[MEAN][m], m) for m in metrics), *(shown[name][i] for name in trailing)]
            for i, r in enumerate(rows)]
    return _markdown_table(header, body)


def _stopped_early(method: MethodResults) -> str:
    """Folds that a time limit stopped, with the epochs they trained, e.g. 'fold 1: 31/40 epochs'."""
    return ", ".join(f"fold {fold}: {t['epochs_trained']}/{t['epochs_planned']} epochs"
                     for fold, t in stopped_folds(method.training).items())


def _per_class_table(rows: Sequence[Row], metric: str, settings: ReportSettings) -> list[str]:
    classes, _ = _classes_and_metrics(rows)
    several = _several_fractions(rows)
    header = ["Method", *classes]
    body = [[_label(r, several), *(_format_stat(r.summary[c][metric], metric) for c in classes)] for r in rows]
    return [f"**{_metric_header(metric, settings)}**", "", *_markdown_table(header, body)]


def _paired(difference: PairedDifference | None) -> str:
    """'+1.23 [0.10, 2.36] better' in Dice points; the verdict only when the interval excludes 0."""
    if difference is None or not math.isfinite(difference.mean):
        return ""
    if not math.isfinite(difference.low):
        return f"{100 * difference.mean:+.2f} (one run)"
    verdict = "" if difference.verdict == "no difference shown" else f" {difference.verdict}"
    return f"{100 * difference.mean:+.2f} [{100 * difference.low:+.2f}, {100 * difference.high:+.2f}]{verdict}"


def _has_upper_bound(rows: Sequence[Row]) -> bool:
    return any(r.method.role == "upper_bound" for r in rows) and any(r.method.role == "reference" for r in rows)


def _gap_note(rows: Sequence[Row]) -> list[str]:
    """Why "Gap closed" is n/a, when it is."""
    if not _has_upper_bound(rows) or all(math.isfinite(r.gap_closed) for r in rows):
        return []
    return ["Gap closed is n/a where the all-labels upper bound's mean Dice is not above the reference's by more "
            "than the reference's run-to-run std: that gap is too small to divide by.", ""]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%" if math.isfinite(value) else ""


def _number(value: float | None) -> str:
    return f"{value:.3g}" if value else ""


def _times(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else ""


def render_markdown(tables: Mapping[str, Sequence[Row]], settings: ReportSettings) -> str:
    lines = [f"# {settings.title}", ""]
    details = {**settings.details, "Metrics": settings.mode}
    if settings.mode == "nnunet":
        details["NSD tolerance"] = f"{settings.nsd_tolerance_mm:g} mm"
    lines += _markdown_table(["Setting", "Value"], [[k, str(v)] for k, v in details.items()]) + [""]
    for split, rows in tables.items():
        folds = sorted({str(f) for r in rows for f in _non_empty(getattr(r.method, split))})
        runs = "validation folds" if split == "cv" else "models of folds"
        spread = "mean ± std over" if len(folds) > 1 else "one run, no std:"
        lines += [f"## {SPLITS[split]}", "", f"Mean over classes; {spread} {runs} {', '.join(folds)}.", "",
                  *_summary_table(rows, settings), "", *_gap_note(rows)]
        classes, metrics = _classes_and_metrics(rows)
        if len(classes) > 2:  # more than one class besides "mean"
            lines += ["### Per class", ""]
            for metric in metrics:
                lines += [*_per_class_table(rows, metric, settings), ""]
    lines += [f"![Dice per method]({DICE_PLOT})", ""]
    if _fraction_panels(tables):
        lines += [f"![Dice versus labeled fraction]({FRACTION_PLOT})", ""]
    lines += ["## How the numbers are computed", "", DEFINITIONS[settings.mode], "",
              "Per fold: mean over cases (NaN skipped), then over classes (nnU-Net's foreground mean); over folds: "
              "mean ± sample std. Gap closed = (method − reference) / (upper bound − reference) on mean Dice, "
              "against the reference of the same labeled fraction. Δ Dice vs reference: mean over folds (runs) of "
              "the method's mean Dice minus the reference's in the same fold, in Dice points, with a 95 % t "
              "interval; 'better' or 'worse' only when the interval excludes 0. Time vs reference: seconds per "
              "training iteration divided by the reference's.", ""]
    return "\n".join(lines)


def _csv_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    classes, metrics = _classes_and_metrics(rows)
    return [(metric, cls) for metric in metrics for cls in classes]


def render_csv(tables: Mapping[str, Sequence[Row]]) -> str:
    """One row per split and method; metric columns ``<metric>/<class>/mean`` and ``.../std`` in raw units
    (fractions for Dice, IoU and NSD; mm or voxels for distances)."""
    columns = _csv_columns(next(iter(tables.values())))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["split", "method", "role", "labeled_fraction", "budget", "cases", "seconds_per_iteration",
                     "time_vs_reference", "dice_gap_closed", "dice_vs_reference", "dice_vs_reference_low",
                     "dice_vs_reference_high", "dice_vs_reference_verdict",
                     *(f"{metric}/{cls}/{stat}" for metric, cls in columns for stat in ("mean", "std"))])
    for split, rows in tables.items():
        for r in rows:
            m = r.method
            writer.writerow([split, m.name, m.role, _csv_value(m.labeled_fraction), m.budget or "", r.cases,
                             _csv_value(m.seconds_per_iteration), _csv_value(r.time_ratio),
                             _csv_value(r.gap_closed), *_paired_csv(r.versus_reference),
                             *(_csv_value(getattr(r.summary[cls][metric], stat))
                               for metric, cls in columns for stat in ("mean", "std"))])
    return out.getvalue()


def _paired_csv(difference: PairedDifference | None) -> list[str]:
    if difference is None:
        return ["", "", "", ""]
    return [_csv_value(difference.mean), _csv_value(difference.low), _csv_value(difference.high), difference.verdict]


def _csv_value(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(float(value))


def render_json(methods: Sequence[MethodResults], tables: Mapping[str, Sequence[Row]],
                settings: ReportSettings) -> str:
    """Everything: settings, and per method its per-case metrics and per-split summaries (NaN written as null)."""
    rows = {(split, id(r.method)): r for split, split_rows in tables.items() for r in split_rows}
    document = {
        "title": settings.title, "mode": settings.mode, "nsd_tolerance_mm": settings.nsd_tolerance_mm,
        "details": dict(settings.details), "definitions": DEFINITIONS[settings.mode],
        "methods": [{
            "name": m.name, "role": m.role, "labeled_fraction": m.labeled_fraction,
            "budget": None if m.budget is None else {"epochs": m.budget.epochs,
                                                     "iterations_per_epoch": m.budget.iterations_per_epoch},
            "seconds_per_iteration": m.seconds_per_iteration,
            "training": {str(fold): summary for fold, summary in m.training.items()},
            **{split: {str(fold): cases for fold, cases in getattr(m, split).items()} for split in SPLITS},
            "summary": {split: _summary_json(rows[split, id(m)]) for split in SPLITS if (split, id(m)) in rows},
        } for m in methods],
    }
    return json.dumps(_finite_or_none(document), indent=1)


def _summary_json(row: Row) -> dict:
    paired = row.versus_reference
    return {"cases": row.cases, "dice_gap_closed": row.gap_closed, "time_vs_reference": row.time_ratio,
            "dice_vs_reference": None if paired is None else {
                "mean": paired.mean, "ci95": [paired.low, paired.high], "runs": paired.runs,
                "verdict": paired.verdict},
            "metrics": {cls: {metric: {"mean": s.mean, "std": s.std, "per_fold": s.per_fold}
                              for metric, s in metrics.items()} for cls, metrics in row.summary.items()}}


def _finite_or_none(obj):
    """JSON has no NaN: write null instead (read back with :func:`load_report_json`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def load_report_json(path: str | Path) -> list[MethodResults]:
    """The rows of a report.json, to rebuild or extend a report without evaluating again (null read as NaN)."""
    with open(path) as f:
        document = json.load(f)

    def runs(data: Mapping) -> dict[str, FoldMetrics]:
        return {fold: {case: {cls: {metric: math.nan if v is None else v for metric, v in values.items()}
                              for cls, values in metrics.items()} for case, metrics in cases.items()}
                for fold, cases in data.items()}

    return [MethodResults(name=m["name"], role=m["role"], labeled_fraction=m["labeled_fraction"],
                          budget=TrainingBudget(**m["budget"]) if m["budget"] else None,
                          seconds_per_iteration=m["seconds_per_iteration"], cv=runs(m["cv"]), test=runs(m["test"]),
                          training=m.get("training", {}))
            for m in document["methods"]]


# ----------------------------------------------------------------------------------------------------------------
# plots and files
# ----------------------------------------------------------------------------------------------------------------

def _dice_panels(tables: Mapping[str, Sequence[Row]]) -> dict[str, list[Entry]]:
    return {SPLITS[split]: [Entry(_label(r, _several_fractions(rows)), r.method.name, r.method.role,
                                  r.summary[MEAN]["Dice"]) for r in rows] for split, rows in tables.items()}


def _fraction_panels(tables: Mapping[str, Sequence[Row]]) -> dict[str, FractionPanel]:
    """Dice against labeled fraction, for splits whose rows span at least two labeled fractions."""
    panels = {}
    for split, rows in tables.items():
        if not _several_fractions(rows):
            continue
        series: dict[str, list[tuple[float, Stat]]] = {}
        for r in rows:
            if r.method.role != "upper_bound" and r.method.labeled_fraction is not None:
                series.setdefault(r.method.name, []).append((r.method.labeled_fraction, r.summary[MEAN]["Dice"]))
        upper = next((r.summary[MEAN]["Dice"] for r in rows if r.method.role == "upper_bound"), None)
        reference = next((r.method.name for r in rows if r.method.role == "reference"), None)
        panels[SPLITS[split]] = FractionPanel(series=series, reference=reference, upper_bound=upper)
    return panels


def _publish(output_folder: Path, texts: Mapping[str, str], plots: Mapping[str, Callable[[Path], None]]
             ) -> dict[str, Path]:
    """Write everything into a staging folder, then move each file into place; remove plots of an older report
    that this one does not have (e.g. no labeled-fraction plot any more)."""
    if output_folder.exists() and not output_folder.is_dir():
        raise UserError(f"The report folder {output_folder} is a file: choose a folder.")
    output_folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_folder, prefix=".report-staging-"))
    try:
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        for name, draw in plots.items():
            draw(staging / name)
        written = {}
        for name in (*plots, *texts):  # plots first: a new table never points to a plot not yet in place
            os.replace(staging / name, output_folder / name)
            written[name] = output_folder / name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in {DICE_PLOT, FRACTION_PLOT} - set(plots):
        (output_folder / stale).unlink(missing_ok=True)
    return written
