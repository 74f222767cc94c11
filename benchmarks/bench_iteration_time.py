"""Time per training iteration of semi-supervised trainers relative to vanilla nnU-Net, measured in one run.

For each trainer, the real nnU-Net trainer is built from the dataset's plans (same plans and batch size for all:
vanilla trains on the labeled-only twin, the others on the semi-supervised dataset), its data loaders are started
exactly as in nnUNetv2_train, and ``train_step`` is timed over a number of iterations after a warm-up, in the
steady semi-supervised phase (the step counter starts where unlabeled batches and the EMA teacher have started, so
SRA-Seg is timed after its supervised warm-up). Time spent waiting for the labeled and the unlabeled loaders is
measured separately, so a loader that starves the device shows up as a wait fraction, and the step is broken
down into phases (forward and losses, of which the teacher's forward, pseudo-label filtering and the SA term;
backward and optimiser step; EMA update) in a second, instrumented pass (each phase synchronised on CUDA). Each
trainer runs in its own process, so that its peak memory can be measured: the peak resident memory of the
training process on CPU (data-loader workers excluded), the peak allocated GPU memory on CUDA.

    python benchmarks/bench_iteration_time.py                      # self-contained: toy 2D data at 128x128
    python benchmarks/bench_iteration_time.py --dataset 101 -c 2d  # a semi dataset made by make-semi + plan
    python benchmarks/bench_iteration_time.py --dataset 101 -p MyPlans --trainers nnUNetTrainerSCDL

Prints a table and writes it as JSON next to ``--output`` (default benchmarks/results/iteration_time.json).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from nnunet_semi.env import register_ext_trainers

VANILLA = "nnUNetTrainer"


class TimedIterator:
    """Wraps a data loader; accumulates the time spent waiting in ``next``."""

    def __init__(self, loader):
        self.loader, self.waited = loader, 0.0

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.loader)
        self.waited += time.perf_counter() - start
        return batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


PHASES = ("waiting for labeled data", "waiting for unlabeled data", "train step", "forward + losses",
          "  of which teacher forward", "  of which pseudo-label filtering", "  of which SA term", "backward + step",
          "EMA update")


class PhaseClock:
    """Inclusive wall time of wrapped callables, by phase name."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, defaultdict(float)

    def wrap(self, owner, attribute: str, phase: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            _synchronize(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _synchronize(self.device)
                self.seconds[phase] += time.perf_counter() - start

        setattr(owner, attribute, timed)


def instrument(trainer, clock: PhaseClock) -> None:
    """Wrap the phases of a training step that this trainer has."""
    if not hasattr(trainer, "compute_train_losses"):  # vanilla nnU-Net: one phase
        clock.wrap(trainer, "train_step", "train step")
        return
    clock.wrap(trainer, "compute_train_losses", "forward + losses")
    for attribute, phase in (("_backward_and_step", "backward + step"), ("after_optimizer_step", "EMA update"),
                             ("similarity_alignment", "  of which SA term")):
        if hasattr(trainer, attribute):
            clock.wrap(trainer, attribute, phase)
    if getattr(trainer, "teacher", None) is not None:
        clock.wrap(trainer.teacher.module, "forward", "  of which teacher forward")
    for module in {sys.modules[c.__module__] for c in type(trainer).__mro__}:
        if hasattr(module, "filtered_hard_pseudo_labels"):
            clock.wrap(module, "filtered_hard_pseudo_labels", "  of which pseudo-label filtering")


def _toy_semi_dataset(workdir: Path, size: int, num_cases: int) -> str:
    """Convert, split and plan a toy 2D dataset inside ``workdir``; returns the semi-supervised dataset name."""
    for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
        os.environ[variable] = str(workdir / variable)
        (workdir / variable).mkdir(parents=True)
    from nnunet_semi.planners.convert_2d import convert_2d_dataset
    from nnunet_semi.planners.make_semi import make_semi_supervised_datasets
    from nnunet_semi.planners.plan import plan_semi_supervised
    from nnunet_semi.toy_data import write_toy_2d_folders
    images, masks = write_toy_2d_folders(workdir / "toy", num_cases, size)
    source = convert_2d_dataset(str(images), str(masks), 801, "BenchToy", ["core", "rim"], threshold=None)
    names = make_semi_supervised_datasets(source, 802, dict(seed=0, fraction=0.25))
    plan_semi_supervised(names["semi"], ["2d"], num_processes=2, fingerprint_processes=2)
    return names["semi"]


def time_trainer(trainer_name: str, dataset: str, configuration: str, device: torch.device, iterations: int,
                 warmup: int, plans: str = "nnUNetPlans") -> dict:
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(dataset, configuration, 0, trainer_name, plans, device=device)
    if hasattr(trainer, "global_step"):  # the steady phase: unlabeled batches and the teacher have started
        trainer.global_step = max(trainer.unlabeled_start_step, trainer.teacher_start_step)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    labeled = TimedIterator(trainer.dataloader_train)
    unlabeled = getattr(trainer, "dataloader_unlabeled", None)
    if unlabeled is not None:
        unlabeled = trainer.dataloader_unlabeled = TimedIterator(unlabeled)
    for _ in range(warmup):
        trainer.train_step(next(labeled))
    labeled.waited = 0.0
    if unlabeled is not None:
        unlabeled.waited = 0.0
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.train_step(next(labeled))
    _synchronize(device)
    seconds = (time.perf_counter() - start) / iterations
    waited = (labeled.waited + (unlabeled.waited if unlabeled is not None else 0.0)) / iterations
    phases = {"waiting for labeled data": labeled.waited / iterations,
              **({"waiting for unlabeled data": unlabeled.waited / iterations} if unlabeled is not None else {})}
    clock = PhaseClock(device)  # a second pass: its synchronisations stay out of the time per iteration above
    instrument(trainer, clock)
    for _ in range(iterations):
        trainer.train_step(next(labeled))
    phases.update({phase: total / iterations for phase, total in clock.seconds.items()})
    for loader in (trainer.dataloader_train, trainer.dataloader_val, getattr(unlabeled, "loader", None)):
        if hasattr(loader, "_finish"):
            loader._finish()
    return {"trainer": trainer_name, "dataset": dataset, "batch_size": trainer.batch_size,
            "unlabeled_batch_size": getattr(trainer, "unlabeled_batch_size", 0),
            "seconds_per_iteration": seconds, "data_wait_fraction": waited / seconds,
            "peak_memory_mb": _peak_memory_mb(device), "phases": phases}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_in_own_process(trainer_name: str, dataset: str, args: argparse.Namespace, workdir: Path) -> dict:
    """:func:`time_trainer` in a fresh Python process (this script with ``--single``), so peak memory is its own."""
    row_file = workdir / f"{trainer_name}.json"
    command = [sys.executable, __file__, "--single", trainer_name, dataset, str(row_file), "-c", args.configuration,
               "-p", args.plans, "--iterations", str(args.iterations), "--warmup", str(args.warmup),
               "--device", args.device]
    subprocess.run(command, check=True, env=os.environ.copy())
    return json.loads(row_file.read_text())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="semi-supervised dataset made by make-semi and planned (default: toy)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerMeanTeacher"])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--toy-size", type=int, default=128, help="image size of the toy dataset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="benchmarks/results/iteration_time.json")
    parser.add_argument("--single", nargs=3, metavar=("TRAINER", "DATASET", "ROW_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    register_ext_trainers()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_train -device cpu does
    if args.single:  # one trainer, in the process started by time_in_own_process
        trainer, dataset, row_file = args.single
        row = time_trainer(trainer, dataset, args.configuration, device, args.iterations, args.warmup, args.plans)
        Path(row_file).write_text(json.dumps(row))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        semi = args.dataset or _toy_semi_dataset(Path(tmp), args.toy_size, num_cases=80)
        os.environ["nnUNet_results"] = str(Path(tmp) / "benchmark_results")  # never write into real results
        from nnunet_semi.planners.plan import related_datasets
        from nnunet_semi.planners.raw import resolve_dataset
        semi = resolve_dataset(semi)
        twin, _ = related_datasets(semi)
        rows = [time_in_own_process(VANILLA, twin, args, Path(tmp))]
        rows += [time_in_own_process(t, semi, args, Path(tmp)) for t in args.trainers]
    vanilla, vanilla_memory = rows[0]["seconds_per_iteration"], rows[0]["peak_memory_mb"]
    print(f"\nTraining iteration time on {args.device} ({args.configuration}, {args.iterations} iterations after "
          f"{args.warmup} warm-up, torch {torch.__version__}):")
    memory = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS"
    print(f"| {'trainer':<28} | labeled batch | unlabeled batch | s / iteration | vs vanilla | waiting for data "
          f"| {memory} (MiB) | vs vanilla |")
    print("|" + "-" * 30 + "|---------------|-----------------|---------------|------------|------------------|"
          + "-" * (len(memory) + 9) + "|------------|")
    for row in rows:
        row["ratio_to_vanilla"] = row["seconds_per_iteration"] / vanilla
        row["memory_ratio_to_vanilla"] = row["peak_memory_mb"] / vanilla_memory
        print(f"| {row['trainer']:<28} | {row['batch_size']:>13} | {row['unlabeled_batch_size']:>15} | "
              f"{row['seconds_per_iteration']:>13.3f} | {row['ratio_to_vanilla']:>9.2f}x | "
              f"{100 * row['data_wait_fraction']:>15.1f}% | {row['peak_memory_mb']:>{len(memory) + 6}.0f} | "
              f"{row['memory_ratio_to_vanilla']:>9.2f}x |")
    print("\nPer phase (seconds per iteration; indented phases are part of the one above):")
    for row in rows:
        print(f"{row['trainer']}:")
        for phase in PHASES:
            if phase in row["phases"]:
                value = row["phases"][phase]
                print(f"  {phase:<36} {value:7.3f} s  {100 * value / row['seconds_per_iteration']:5.1f} %")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"device": args.device, "configuration": args.configuration, "rows": rows},
                                 indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
