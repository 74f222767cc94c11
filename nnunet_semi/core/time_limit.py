"""A wall-clock limit for budget-variant trainings, and a summary of what each training did.

``nnunet-semi benchmark --time-limit`` gives every training a deadline (unix seconds) in the environment variable
``nnUNet_semi_stop_training_at``. A trainer that reaches it at the end of an epoch finishes the way nnU-Net finishes
a complete training (``checkpoint_final.pth``, then nnU-Net's final validation), so the fold is usable and
``nnUNetv2_train --c`` can later continue it to the full budget. Every budget-variant training writes
``training_summary.json`` to its fold folder: epochs planned and trained, whether the deadline stopped it, and the
peak memory of rank 0 (GPU memory allocated by torch; resident memory of the main process).
"""
from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist

from nnunet_semi.files import write_atomic

STOP_TRAINING_AT_VARIABLE = "nnUNet_semi_stop_training_at"
SUMMARY_FILE = "training_summary.json"


class TimeLimitReached(Exception):
    """Raised at an epoch's end to leave nnU-Net's training loop."""


def stop_training_at() -> float | None:
    """The deadline from the environment (unix seconds), or None."""
    value = os.environ.get(STOP_TRAINING_AT_VARIABLE)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{STOP_TRAINING_AT_VARIABLE}={value!r} is not a time in seconds since the epoch") from None


def read_training_summary(fold_folder: str | Path) -> dict | None:
    path = Path(fold_folder) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def peak_gpu_memory_mib(summaries: Iterable[dict]) -> float | None:
    """Largest peak GPU memory of several trainings' summaries (None on CPU)."""
    return max((s["peak_gpu_memory_mib"] for s in summaries if s.get("peak_gpu_memory_mib")), default=None)


def stopped_folds(summaries: Mapping) -> dict:
    """The summaries (by fold) of the trainings that a time limit stopped."""
    return {fold: s for fold, s in summaries.items() if s.get("stopped_at_time_limit")}


class WallClockLimit:
    """Mixin for nnU-Net trainers (budget variants): stop at ``nnUNet_semi_stop_training_at`` and summarise."""

    def on_train_start(self):
        self.stop_training_at = stop_training_at()
        self.stopped_at_time_limit = False
        continued = self.current_epoch > 0  # nnU-Net's --c has loaded a checkpoint
        self.summary_before_continuation = (read_training_summary(self.output_folder) or {}) if continued else {}
        if continued and self.local_rank == 0:
            self._reopen_stopped_training()
        if self.stop_training_at is not None:
            self.print_to_log_file(f"Training stops after the first epoch that ends past "
                                   f"{time.strftime('%H:%M:%S', time.localtime(self.stop_training_at))} "
                                   f"({STOP_TRAINING_AT_VARIABLE}).")
        super().on_train_start()

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.current_epoch < self.num_epochs and self._deadline_passed():
            self.stopped_at_time_limit = True
            self.print_to_log_file(f"Time limit reached: stopping after {self.current_epoch} of {self.num_epochs} "
                                   f"epochs.")
            raise TimeLimitReached

    def _reopen_stopped_training(self) -> None:
        """``--c`` on a training that the limit stopped continues it: its final checkpoint becomes the latest one,
        so that a kill during the continuation resumes from the continuation's checkpoints, not from the stop."""
        folder = Path(self.output_folder)
        if (read_training_summary(folder) or {}).get("stopped_at_time_limit") and \
                (folder / "checkpoint_final.pth").is_file():
            os.replace(folder / "checkpoint_final.pth", folder / "checkpoint_latest.pth")
            self.print_to_log_file("Continuing a training that a time limit had stopped.")

    def _deadline_passed(self) -> bool:
        """Rank 0's clock decides, so that every DDP rank leaves the loop at the same epoch (all ranks share the
        environment, so either all or none have a deadline)."""
        if self.stop_training_at is None:
            return False
        passed = torch.tensor(float(time.time() >= self.stop_training_at), device=self.device)
        if self.is_ddp:
            dist.broadcast(passed, src=0)
        return bool(passed.item())

    def run_training(self):
        try:
            super().run_training()
        except TimeLimitReached:
            self.on_train_end()

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            text = json.dumps(self.training_summary(), indent=2)
            write_atomic(Path(self.output_folder) / SUMMARY_FILE, lambda tmp: Path(tmp).write_text(text))

    def training_summary(self) -> dict:
        """This training's summary; the peaks of a continued training include those before the continuation."""
        gpu = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if self.device.type == "cuda" else None
        peaks = {"peak_gpu_memory_mib": gpu,
                 "peak_main_process_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        for key, value in peaks.items():
            earlier = self.summary_before_continuation.get(key)
            peaks[key] = value if earlier is None else max(earlier, value or 0)
        return {"epochs_planned": self.num_epochs, "epochs_trained": self.current_epoch,
                "iterations_per_epoch": self.num_iterations_per_epoch,
                "stopped_at_time_limit": self.stopped_at_time_limit, **peaks}
