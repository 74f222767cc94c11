"""``nnunet-semi demo``: the whole semi-supervised workflow on a tiny generated dataset, in a few CPU minutes.

Generates 2D images with masks, converts them to an nnU-Net dataset, keeps labels for a few cases only, plans
the labeled-only twin and preprocesses all datasets with its plans, then trains with the unmodified nnU-Net
commands vanilla nnU-Net on the labeled cases, Mean Teacher on labeled + unlabeled cases and vanilla nnU-Net on
all labels (upper bound), predicts the held-out test set with ``nnUNetv2_predict`` and prints a Dice table.
Everything lives in its own folder (its own nnUNet_raw / _preprocessed / _results), so nothing of yours is touched.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from nnunet_semi.env import nnunet_environment
from nnunet_semi.errors import UserError

DEMO_MARKER = ".nnunet_semi_demo"
SOURCE_ID, SEMI_ID, TWIN_ID, FULL_ID = 901, 902, 903, 904


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists():
        if not (workdir / DEMO_MARKER).is_file():
            raise UserError(f"{workdir} exists and was not made by the demo; choose another --workdir.")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / DEMO_MARKER).touch()


def _use_demo_folders(workdir: Path) -> None:
    for variable, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                          ("nnUNet_results", "nnUNet_results")):
        os.environ[variable] = str(workdir / sub)
    os.environ.update(nnunet_environment())


def _step(title: str, command: list[str], log_dir: Path) -> None:
    """Run one command quietly; its output goes to a log file, shown only if it fails."""
    log = log_dir / f"{len(list(log_dir.iterdir())):02d}_{command[0].replace('-', '_')}.log"
    print(f"  {title:<58}", end="", flush=True)
    start = time.time()
    with open(log, "w") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    if result.returncode != 0:
        print("FAILED")
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"demo step failed: {' '.join(command)} (full log: {log})")
    print(f"{time.time() - start:6.1f} s")


def _dice_per_class(summary_file: Path) -> dict[str, float]:
    import json
    summary = json.loads(summary_file.read_text())
    return {label: values["Dice"] for label, values in summary["mean"].items()}


def run_demo(workdir: str | Path, num_epochs: int = 4, iterations_per_epoch: int = 25, num_cases: int = 60,
             num_labeled: int = 8) -> dict[str, dict[str, float]]:
    """Run every step; returns test-set Dice per label for each trained model."""
    from nnunet_semi.toy_data import write_toy_2d_folders

    workdir = Path(workdir).resolve()
    _prepare_workdir(workdir)
    _use_demo_folders(workdir)
    logs = workdir / "logs"
    logs.mkdir()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = f"_{num_epochs}epochs_{iterations_per_epoch}its"
    print(f"nnunet-semi demo in {workdir} ({device}; logs in {logs})")

    images, masks = write_toy_2d_folders(workdir / "toy_data", num_cases)
    semi = "nnunet-semi"
    _step("convert 2D images + masks -> raw dataset", [semi, "convert-2d", str(images), str(masks), "-o",
          str(SOURCE_ID), "-n", "Toy2D", "--mask-values", "--label-names", "core", "rim"], logs)
    _step(f"make-semi: {num_labeled} labeled cases, rest unlabeled, 20% test",
          [semi, "make-semi", str(SOURCE_ID), "-o", str(SEMI_ID), "--twin-id", str(TWIN_ID), "--full-id",
           str(FULL_ID), "--count", str(num_labeled), "--test-fraction", "0.2", "--name", "Toy2DSemi"], logs)
    _step("plan labeled twin, preprocess all with its plans",
          [semi, "plan", str(SEMI_ID), "-c", "2d", "-np", "2", "-npfp", "2", "--verify_dataset_integrity"], logs)

    runs = {"vanilla nnU-Net (labeled only)": (TWIN_ID, "nnUNetTrainer" + budget),
            "Mean Teacher (labeled + unlabeled)": (SEMI_ID, "nnUNetTrainerMeanTeacher" + budget),
            "vanilla nnU-Net (all labels)": (FULL_ID, "nnUNetTrainer" + budget)}
    test_images = workdir / "nnUNet_raw" / "Dataset902_Toy2DSemi" / "imagesTs"
    test_labels = workdir / "nnUNet_raw" / "Dataset902_Toy2DSemi" / "labelsTs"
    results = {}
    for method, (dataset_id, trainer) in runs.items():
        _step(f"nnUNetv2_train {dataset_id} 2d 0 -tr {trainer}",
              ["nnUNetv2_train", str(dataset_id), "2d", "0", "-tr", trainer, "-device", device], logs)
        predictions = workdir / "test_predictions" / trainer / str(dataset_id)
        _step(f"nnUNetv2_predict (test set) with {trainer}",
              ["nnUNetv2_predict", "-i", str(test_images), "-o", str(predictions), "-d", str(dataset_id), "-c",
               "2d", "-f", "0", "-tr", trainer, "-device", device, "-npp", "1", "-nps", "1"], logs)
        _step("nnUNetv2_evaluate_folder", ["nnUNetv2_evaluate_folder", str(test_labels), str(predictions), "-djfile",
              str(predictions / "dataset.json"), "-pfile", str(predictions / "plans.json")], logs)
        results[method] = _dice_per_class(predictions / "summary.json")
    _print_table(results, num_epochs * iterations_per_epoch)
    return results


def _print_table(results: dict[str, dict[str, float]], iterations: int) -> None:
    labels = next(iter(results.values())).keys()
    print(f"\nTest-set Dice after {iterations} training iterations (toy data, fold 0):")
    header = f"| {'method':<36} | " + " | ".join(f"label {lab}" for lab in labels) + " |  mean  |"
    print(header)
    print("|" + "-" * (len(header) - 2) + "|")
    for method, dice in results.items():
        values = list(dice.values())
        print(f"| {method:<36} | " + " | ".join(f"{v:7.3f}" for v in values) +
              f" | {sum(values) / len(values):6.3f} |")


def _run(args: argparse.Namespace) -> int:
    run_demo(args.workdir, args.epochs, args.iterations)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the whole workflow on a tiny generated dataset (CPU minutes)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="nnunet_semi_demo", help="folder for everything the demo writes")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    parser.set_defaults(func=_run)
