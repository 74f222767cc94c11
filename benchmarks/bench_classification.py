"""SSGNet's classification experiment on a class-imbalanced dataset built from a 2D segmentation dataset.

    python benchmarks/bench_classification.py 201 -w bench_cls --new-id 211 --seeds 0 1 2

Classes: each case of the raw 2D dataset DATASET (e.g. Kvasir-SEG from ``convert-2d``) is ``small`` when its
foreground covers less than ``--threshold`` of the image (5 %: a small polyp, about 1 case in 5 of Kvasir-SEG) and
``large`` otherwise, written to ``<work>/classes.csv``. Then, each step skipped when its output exists (so a rerun
resumes):

1. ``nnunet-semi train-gan`` one generator per class (``--arch``, ``--gan-kimg``, ``--gan-resolution``; channel base
   1024, max 128, ADA over 100 kimg, mirroring: a CPU-sized network), on the
   classifier's training cases only (``<work>/gan_classes.csv``: no test image leaks into the synthetic ones);
2. ``nnunet-semi synthesize --strategy balance+50%`` into a new dataset ``--new-id`` (enough for every mode);
3. ``nnunet-semi classify`` for every mode (none, balance, balance+20%, balance+50%) and seed, on the same fixed,
   stratified test split of real cases (``--split-seed``);
4. ``<work>/classification_benchmark.md`` / ``.json``: accuracy, macro F1 and per-class recall, mean +- std over
   the seeds, and ``classification_benchmark.png`` (macro F1 and minority-class recall per mode).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_semi.files import write_atomic
from nnunet_semi.classification.data import stratified_test_cases
from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.aggregate import Stat, paired_difference
from nnunet_semi.planners.raw import raw_root, resolve_dataset
from nnunet_semi.synthesis.training import latest_checkpoint, snapshot_kimg

MODES = ("none", "balance", "balance+20%", "balance+50%")
TEST_FRACTION = 0.2


def semi(*args: str) -> None:
    command = [sys.executable, "-m", "nnunet_semi.cli", *args]
    print("+ nnunet-semi " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def write_csv(rows: dict[str, str], path: Path) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text("".join(f"{case},{c}\n" for case, c in rows.items())))


def case_classes(dataset: str, threshold: float) -> dict[str, str]:
    """``{case_id: 'small' | 'large'}`` by the foreground fraction of each 2D label (PNG)."""
    folder = raw_root() / resolve_dataset(dataset) / "labelsTr"
    labels = sorted(folder.glob("*.png"))
    if not labels:
        raise SystemExit(f"{folder} has no PNG labels: give a 2D dataset from 'nnunet-semi convert-2d'.")
    return {p.stem: "small" if (np.asarray(Image.open(p)) > 0).mean() < threshold else "large" for p in labels}


def gans_done(gans: Path, classes: list[str], kimg: float) -> bool:
    """Every class folder's newest snapshot (``network-snapshot-<images shown>.pt``) is at ``kimg`` or later."""
    snapshots = [latest_checkpoint(gans / c) for c in classes]
    return all(s is not None and snapshot_kimg(s) >= kimg for s in snapshots)


def check_same_synthetic_dataset(runs: Path, new_id: str) -> None:
    """Refuse a ``--new-id`` other than the one the finished runs in ``runs`` used (a wrong id would otherwise be
    taken for a dataset not made yet, and a second synthetic dataset would be written under it)."""
    for report in sorted(runs.glob("*/seed*/report.json")):
        used = json.loads(report.read_text())["dataset"]
        if used != new_id:
            raise UserError(f"{report} was made with --new-id {used}, not {new_id}: pass --new-id {used} to resume "
                            f"this benchmark, or another --work folder for a new one.")


def summarise(reports: dict[str, list[dict]]) -> dict:
    """Mean and std over seeds of accuracy, macro F1 and each class's recall, per mode."""
    summary = {}
    for mode, runs in reports.items():
        values = {"accuracy": [r["accuracy"] for r in runs], "macro_f1": [r["macro_f1"] for r in runs]}
        for c in runs[0]["per_class"]:
            values[f"recall_{c}"] = [r["per_class"][c]["recall"] for r in runs]
        summary[mode] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                             "runs": v} for k, v in values.items()}
        summary[mode]["training_images"] = runs[0]["counts"]
    return summary


def versus_none(summary: dict, key: str, mode: str) -> str:
    """``mode`` minus ``none`` on ``key``, paired by seed, in points with its 95 % t interval and verdict."""
    def stat(m: str) -> Stat:
        runs = summary[m][key]["runs"]
        return Stat(float(np.mean(runs)), float("nan"), {str(i): 100 * v for i, v in enumerate(runs)})
    d = paired_difference(stat(mode), stat("none"))
    return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] {d.verdict}"


def markdown(summary: dict, seeds: list[int]) -> str:
    first = next(iter(summary.values()))
    keys = ["accuracy", "macro_f1", *sorted(k for k in first if k.startswith("recall_"))]
    paired = ["macro_f1", "recall_small"]
    lines = ["| synthetic | training images (real + synthetic per class) | " + " | ".join(keys) + " | "
             + " | ".join(f"Δ {k} vs none" for k in paired) + " |",
             "|---|---|" + "---|" * (len(keys) + len(paired))]
    for mode, entry in summary.items():
        counts = ", ".join(f"{c}: {n['real_train']} + {n['synthetic']}" for c, n in entry["training_images"].items())
        cells = " | ".join(f"{100 * entry[k]['mean']:.1f} ± {100 * entry[k]['std']:.1f}" for k in keys)
        deltas = " | ".join("–" if mode == "none" else versus_none(summary, k, mode) for k in paired)
        lines.append(f"| {mode} | {counts} | {cells} | {deltas} |")
    return "\n".join(lines) + (f"\n\nmean ± std (%) over seeds {seeds}, the same test split for every run. Δ: mean "
                               "over seeds of the mode minus `none` with the same seed, in points, 95 % t interval; "
                               "'better' / 'worse' only when it excludes 0.\n")


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = list(summary)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for offset, key in ((-0.2, "macro_f1"), (0.2, "recall_small")):
        axis.bar(np.arange(len(modes)) + offset, [100 * summary[m][key]["mean"] for m in modes], 0.4,
                 yerr=[100 * summary[m][key]["std"] for m in modes], capsize=3, label=key.replace("_", " "))
    axis.set_xticks(range(len(modes)), modes)
    axis.set_ylabel("%")
    axis.legend()
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="raw 2D dataset (id or name) with PNG labels, e.g. from convert-2d")
    parser.add_argument("-w", "--work", required=True, help="folder for classes.csv, GANs, runs and the report")
    parser.add_argument("--new-id", required=True, help="id of the dataset with the synthetic images")
    parser.add_argument("--threshold", type=float, default=0.05, help="foreground fraction below which a case "
                                                                      "is 'small' (default 0.05)")
    parser.add_argument("--arch", default="stylegan2", choices=("stylegan2", "stylegan3-t"))
    parser.add_argument("--gan-kimg", type=float, default=10, help="kimg per class generator (default 10)")
    parser.add_argument("--gan-resolution", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="classifier epochs (default 10)")
    parser.add_argument("--resolution", type=int, default=64, help="classifier input size (default 64)")
    parser.add_argument("--model", default="efficientnet_lite0", choices=("efficientnet_lite0", "resnet50"))
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    classes = case_classes(args.dataset, args.threshold)
    counts = {c: sum(v == c for v in classes.values()) for c in ("small", "large")}
    print(f"classes (foreground < {args.threshold:.0%} of the image: small): {counts}")
    classes_csv, gan_csv = work / "classes.csv", work / "gan_classes.csv"
    write_csv(classes, classes_csv)
    test = stratified_test_cases(classes, TEST_FRACTION, args.split_seed)  # what classify holds out
    write_csv({case: c for case, c in classes.items() if case not in test}, gan_csv)
    check_same_synthetic_dataset(work / "runs", args.new_id)  # before hours of GAN training
    gans = work / "gans"
    if not gans_done(gans, list(counts), args.gan_kimg):
        resume = ["--resume"] if gans.exists() else []
        semi("train-gan", args.dataset, "-o", str(gans), "--classes", str(gan_csv), "--arch", args.arch,
             "--resolution", str(args.gan_resolution), "--kimg", str(args.gan_kimg), "--channel-base", "1024",
             "--channel-max", "128", "--ada-kimg", "100", "--mirror", "--snapshot-kimg", str(args.gan_kimg),
             *resume)
    try:
        resolve_dataset(args.new_id)
    except UserError:  # not made yet
        semi("synthesize", args.dataset, "--generators", str(gans), "--strategy", "balance+50%", "--new-id",
             args.new_id, "--new-name", "ClassBenchSynthetic")
    reports: dict[str, list[dict]] = {}
    for mode in MODES:
        for seed in args.seeds:
            out = work / "runs" / mode.replace("%", "pct") / f"seed{seed}"
            if not (out / "report.json").is_file():
                semi("classify", args.new_id, "--labels", str(classes_csv), "--synthetic", mode, "-o", str(out),
                     "--seed", str(seed), "--split-seed", str(args.split_seed), "--test-fraction", str(TEST_FRACTION),
                     "--epochs", str(args.epochs), "--resolution", str(args.resolution), "--model", args.model)
            reports.setdefault(mode, []).append(json.loads((out / "report.json").read_text()))
    summary = summarise(reports)
    setup = vars(args) | {"class_counts": counts, "weights": reports["none"][0]["weights"]}
    write_atomic(work / "classification_benchmark.json",
                 lambda tmp: Path(tmp).write_text(json.dumps({"setup": setup, "summary": summary}, indent=2)))
    table = markdown(summary, args.seeds)
    write_atomic(work / "classification_benchmark.md", lambda tmp: Path(tmp).write_text(table))
    plot(summary, work / "classification_benchmark.png")
    print(table)


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
