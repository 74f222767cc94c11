"""``nnunet-semi demo``: the whole semi-supervised workflow on a tiny generated dataset, in a few CPU minutes.

A user's day, on toy data: 2D images with masks are converted to an nnU-Net dataset (``convert-2d``), a few cases
keep their labels and the rest become unlabeled, with a held-out test set (``make-semi``), the labeled-only twin is
planned and every dataset preprocessed with its plans (``plan``), then ``benchmark`` trains, with the unmodified
``nnUNetv2_train``, vanilla nnU-Net on the labeled cases, Mean Teacher on labeled + unlabeled cases and vanilla
nnU-Net on all labels (upper bound), predicts the test set with ``nnUNetv2_predict`` and writes a report.
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

from nnunet_semi.env import nnunet_environment
from nnunet_semi.errors import UserError
from nnunet_semi.cli_text import help_text

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
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = str(workdir / variable)
    os.environ.update(nnunet_environment())


def _step(title: str, command: list[str], log_dir: Path, show_progress: bool = False) -> None:
    """Run one command; its output goes to a log file and is shown only if it fails. ``show_progress``: its
    progress bars (stderr) go to the console, on their own lines below the title."""
    log = log_dir / f"{len(list(log_dir.iterdir())):02d}_{title.split(':')[0]}.log"
    print(f"  {title:<62}", end="\n" if show_progress else "", flush=True)
    start = time.time()
    with open(log, "w") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        result = subprocess.run(command, stdout=f, stderr=None if show_progress else subprocess.STDOUT,
                                env=os.environ.copy())
    if result.returncode != 0:
        print("FAILED")
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"demo step failed: {' '.join(command)} (full log: {log})")
    print(f"{'  done in' if show_progress else ''}{time.time() - start:6.1f} s")


def run_demo(workdir: str | Path, num_epochs: int = 4, iterations_per_epoch: int = 12, num_cases: int = 60,
             num_labeled: int = 6) -> Path:
    """Run every step; returns the folder of the benchmark report."""
    from nnunet_semi.toy_data import write_toy_2d_folders

    workdir = Path(workdir).resolve()
    _prepare_workdir(workdir)
    _use_demo_folders(workdir)
    logs = workdir / "logs"
    logs.mkdir()
    print(f"nnunet-semi demo in {workdir} (logs of every step in {logs})")
    images, masks = write_toy_2d_folders(workdir / "toy_data", num_cases)
    semi = [sys.executable, "-m", "nnunet_semi.cli"]
    _step("convert-2d: 2D images + masks -> raw nnU-Net dataset",
          [*semi, "convert-2d", str(images), str(masks), "-o", str(SOURCE_ID), "-n", "Toy2D", "--mask-values",
           "--label-names", "core", "rim"], logs)
    _step(f"make-semi: {num_labeled} labeled, the rest unlabeled, 20% test",
          [*semi, "make-semi", str(SOURCE_ID), "-o", str(SEMI_ID), "--twin-id", str(TWIN_ID), "--full-id",
           str(FULL_ID), "--count", str(num_labeled), "--test-fraction", "0.2", "--name", "Toy2DSemi"], logs)
    _step("plan: plan the labeled twin, preprocess all with its plans",
          [*semi, "plan", str(SEMI_ID), "-c", "2d", "-np", "2", "-npfp", "2", "--verify_dataset_integrity"], logs)
    report = workdir / "report"
    _step(f"benchmark: nnUNetv2_train x3, nnUNetv2_predict ({num_epochs}x{iterations_per_epoch} it)",
          [*semi, "benchmark", str(SEMI_ID), "-c", "2d", "-tr", "nnUNetTrainerMeanTeacher", "-f", "0", "--budget",
           f"{num_epochs}x{iterations_per_epoch}", "-o", str(report), "--title", "nnunet-semi demo (toy data)"],
          logs, show_progress=True)
    summary = (report / "report.md").read_text().split("\n## ")
    print("\n## " + next(s for s in summary if s.startswith("Test set")).split("\n\n### ")[0])
    print(f"Report, per-class tables and plots: {report}/report.md, {report}/dice_per_method.png, "
          f"{report}/learning_curves.png (test Dice against iterations)")
    print("Toy data and a few training iterations: the numbers show that the pipeline works, not which method wins.")
    return report


def _run(args: argparse.Namespace) -> int:
    run_demo(args.workdir, args.epochs, args.iterations)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the whole workflow on a tiny generated dataset (CPU minutes)",
                                   description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="nnunet_semi_demo", help="folder for everything the demo writes")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of every benchmarked trainer")
    parser.add_argument("--iterations", type=int, default=12, help="training iterations per epoch")
    parser.set_defaults(func=_run)
