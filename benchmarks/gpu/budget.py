"""The GPU kit's ``--budget auto``: the largest EPOCHSxITERATIONS budget whose trainings end inside the time left.

Reads the timings of ``benchmarks/bench_iteration_time.py`` (one JSON per fold, measured while the folds' timings ran
in parallel, as the folds' trainings will) and sizes one budget for every row, since the benchmark compares rows at
equal iterations. Each fold trains its rows one after another, so a fold takes, per row, a fixed start-up cost plus
``epochs x (iterations x seconds_per_iteration + per-epoch cost)`` (validation iterations, the checkpoint); the slowest
fold's timing of each row counts. Epochs are nnU-Net's 250 iterations when at least ``--min-epochs`` of them fit
(fewer, longer epochs pay the per-epoch cost less often), else 100, else 50 (so that nnU-Net's polynomial learning
rate, stepped per epoch, still decays in steps). Prints the budget (``EPOCHSxITERATIONS``) on stdout and the
arithmetic on stderr.

Usage: python budget.py TIMING.json [TIMING.json ...] --seconds S [--min-epochs 10] [--startup-s 45]
       [--epoch-overhead-s 3]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

EPOCH_LENGTHS = (250, 100, 50)  # iterations per epoch, nnU-Net's own first


def slowest_seconds_per_iteration(timings: list[dict]) -> dict[str, float]:
    """Per trainer, the largest seconds per iteration over the timing files."""
    slowest: dict[str, float] = {}
    for timing in timings:
        for row in timing["rows"]:
            slowest[row["trainer"]] = max(slowest.get(row["trainer"], 0.0), row["seconds_per_iteration"])
    return slowest


def affordable_epochs(seconds_per_iteration: dict[str, float], seconds: float, iterations_per_epoch: int,
                      startup_s: float, epoch_overhead_s: float) -> int:
    """Epochs of ``iterations_per_epoch`` that every row can train one after another within ``seconds`` (>= 0)."""
    per_epoch = sum(iterations_per_epoch * s + epoch_overhead_s for s in seconds_per_iteration.values())
    return max(0, math.floor((seconds - startup_s * len(seconds_per_iteration)) / per_epoch))


def choose_budget(seconds_per_iteration: dict[str, float], seconds: float, min_epochs: int, startup_s: float,
                  epoch_overhead_s: float) -> tuple[int, int]:
    """(epochs, iterations per epoch): the longest epoch of 250, 100, 50 iterations that gives ``min_epochs``."""
    for iterations in EPOCH_LENGTHS:
        epochs = affordable_epochs(seconds_per_iteration, seconds, iterations, startup_s, epoch_overhead_s)
        if epochs >= min_epochs:
            break
    return epochs, iterations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("timings", nargs="+", type=Path)
    parser.add_argument("--seconds", type=float, required=True, help="wall time left for training")
    parser.add_argument("--min-epochs", type=int, default=10)
    parser.add_argument("--startup-s", type=float, default=45.0,
                        help="per training: start-up, final validation, learning-curve snapshots")
    parser.add_argument("--epoch-overhead-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    speeds = slowest_seconds_per_iteration([json.loads(p.read_text()) for p in args.timings])
    epochs, iterations = choose_budget(speeds, args.seconds, args.min_epochs, args.startup_s, args.epoch_overhead_s)
    print(f"budget.py: {', '.join(f'{t} {s:.3f} s/it' for t, s in speeds.items())}; {args.seconds:.0f} s for "
          f"training -> {epochs} epochs x {iterations} iterations", file=sys.stderr)
    if epochs < 1:
        print("budget.py: not even one epoch fits in the time left.", file=sys.stderr)
        return 1
    print(f"{epochs}x{iterations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
