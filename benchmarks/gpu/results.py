"""The GPU kit's results.json from a ``nnunet-semi benchmark`` folder, plus the report and its plot, into OUT.

results.json: per method the test Dice (mean and std over the folds' models, and per fold), the cross-validation
Dice, seconds per training iteration and its ratio to vanilla nnU-Net, the epochs each fold trained (and whether the
time limit stopped it), the peak GPU memory; the budget, the wall time against the deadline, the device and the
versions of Python, torch, nnU-Net and nnunet-semi.

When the benchmark did not finish (``--benchmark-status`` not 0, e.g. 124 when the deadline killed it), results.json
says so and lists the training summaries that exist.

With ``--timings`` (the JSON files of ``benchmarks/bench_iteration_time.py`` that ``--budget auto`` measured),
results.json also holds each row's seconds per iteration, ratio to vanilla and peak memory from those timings.

Usage: python results.py BENCHMARK_FOLDER -o OUT --start UNIX_SECONDS --deadline-s S [--smoke 0|1]
       [--benchmark-status N] [--timings FILE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import torch

from nnunet_semi.core.time_limit import peak_gpu_memory_mib, stopped_folds


def mean_dice(summary: dict | None) -> dict | None:
    """Mean Dice over classes ('mean' when there are several, else the one class) with std and per fold."""
    if not summary:
        return None
    metrics = summary["metrics"]
    dice = (metrics.get("mean") or next(iter(metrics.values())))["Dice"]
    return {"mean": dice["mean"], "std": dice["std"], "per_fold": dice["per_fold"]}


def method_results(method: dict) -> dict:
    summary, training = method.get("summary", {}), method.get("training", {})
    return {
        "role": method["role"],
        "test_dice": mean_dice(summary.get("test")),
        "cv_dice": mean_dice(summary.get("cv")),
        "test_dice_vs_vanilla": (summary.get("test") or {}).get("dice_vs_reference"),
        "seconds_per_iteration": method["seconds_per_iteration"],
        "time_vs_vanilla": (summary.get("test") or summary.get("cv") or {}).get("time_vs_reference"),
        "training": training,
        "stopped_at_time_limit": bool(stopped_folds(training)),
        "peak_gpu_memory_mib": peak_gpu_memory_mib(training.values()),
    }


def finished_trainings() -> dict:
    """training_summary.json of every training in nnUNet_results (what an incomplete run got done)."""
    results = Path(os.environ["nnUNet_results"])
    return {str(p.parent.relative_to(results)): json.loads(p.read_text())
            for p in sorted(results.glob("*/*/fold_*/training_summary.json"))}


def environment(device: str) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "nnunetv2": version("nnunetv2"),
            "nnunet_semi": version("nnunet-semi"),
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--deadline-s", type=float, required=True)
    parser.add_argument("--smoke", type=int, default=0)
    parser.add_argument("--benchmark-status", type=int, default=0, help="exit status of nnunet-semi benchmark")
    parser.add_argument("--timings", nargs="*", type=Path, default=[],
                        help="bench_iteration_time.py JSON files (missing files are skipped)")
    args = parser.parse_args()

    elapsed = time.time() - args.start
    report_file = args.benchmark / "report.json"
    complete = args.benchmark_status == 0 and report_file.is_file()
    report = json.loads(report_file.read_text()) if complete else {"title": None, "details": {}, "methods": []}
    results = {
        "smoke": bool(args.smoke),
        "complete": complete,
        "benchmark_exit_status": args.benchmark_status,  # 124: killed at the deadline
        "title": report["title"],
        "details": report["details"],
        "methods": {m["name"]: method_results(m) for m in report["methods"]},
        "training_summaries": {} if complete else finished_trainings(),
        "iteration_timings": {p.name: json.loads(p.read_text()) for p in args.timings if p.is_file()},
        "wall_seconds": round(elapsed, 1),
        "deadline_seconds": args.deadline_s,
        "deadline_met": elapsed <= args.deadline_s,
        "environment": environment(report["details"].get("device", "cuda" if torch.cuda.is_available() else "cpu")),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=1))
    for name in ("report.md", "dice_per_method.png", "learning_curves.png", "learning_curves.csv"):
        if (args.benchmark / name).is_file():
            shutil.copy(args.benchmark / name, args.output / name)
    for name, method in results["methods"].items():
        dice = method["test_dice"] or method["cv_dice"] or {}
        print(f"{name:40s} Dice {dice.get('mean', float('nan')):.3f}  s/it {method['seconds_per_iteration']}  "
              f"stopped early: {method['stopped_at_time_limit']}")
    print(f"wall time {elapsed:.0f} s of {args.deadline_s:.0f} s; results in {args.output / 'results.json'}")


if __name__ == "__main__":
    main()
