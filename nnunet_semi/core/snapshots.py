"""Weight snapshots every K epochs, for learning curves (``nnunet-semi benchmark --curve-every``).

The benchmark sets ``nnUNet_semi_snapshot_every=K`` for its trainings. A budget-variant trainer then writes, after
every K-th epoch and after the last one, ``fold_X/snapshots/epoch_NNNN_student.pth`` and, when it has an EMA
teacher, ``epoch_NNNN_teacher.pth`` (NNNN: epochs completed). Each is a checkpoint in nnU-Net's format with the
network weights only (no optimiser), so ``nnUNetv2_predict -chk snapshots/epoch_0010_teacher.pth`` predicts with it
and :mod:`nnunet_semi.evaluation.curves` evaluates it in process.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from nnunet_semi.core.teacher import unwrap_network
from nnunet_semi.core.time_limit import TimeLimitReached
from nnunet_semi.files import write_atomic

SNAPSHOT_EVERY_VARIABLE = "nnUNet_semi_snapshot_every"
SNAPSHOT_FOLDER = "snapshots"


def snapshot_every() -> int | None:
    """K from the environment (epochs), or None when snapshots are off."""
    value = os.environ.get(SNAPSHOT_EVERY_VARIABLE)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{SNAPSHOT_EVERY_VARIABLE}={value!r} must be a positive number of epochs")
    return int(value)


def snapshot_name(epochs_done: int, network: str) -> str:
    return f"epoch_{epochs_done:04d}_{network}.pth"


class WeightSnapshots:
    """Mixin for nnU-Net trainers (budget variants): write weight snapshots every ``nnUNet_semi_snapshot_every``
    epochs and after the last epoch, also when a time limit ends training early (rank 0; the student is the
    trained network, the teacher the EMA teacher when the trainer has one). A training that starts from epoch 0
    first removes the snapshots of an earlier training in the same fold folder."""

    def on_train_start(self):
        self.snapshot_every = snapshot_every()  # a bad value fails before any training
        folder = Path(self.output_folder) / SNAPSHOT_FOLDER
        if self.current_epoch == 0 and self.local_rank == 0 and folder.is_dir():
            shutil.rmtree(folder)
            print(f"Removed {folder}: snapshots of an earlier training in this fold folder.")
        super().on_train_start()

    def on_epoch_end(self):
        epochs_done = self.current_epoch + 1
        try:
            super().on_epoch_end()
        except TimeLimitReached:
            self._maybe_write_snapshots(epochs_done, last=True)
            raise
        self._maybe_write_snapshots(epochs_done, last=epochs_done == self.num_epochs)

    def _maybe_write_snapshots(self, epochs_done: int, last: bool) -> None:
        due = last or (self.snapshot_every is not None and epochs_done % self.snapshot_every == 0)
        if self.snapshot_every is not None and self.local_rank == 0 and due:
            self.write_snapshots(epochs_done)

    def snapshot_networks(self) -> dict[str, torch.nn.Module]:
        """The networks to snapshot by name: the student, and the EMA teacher if there is one."""
        networks = {"student": unwrap_network(self.network)}
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            networks["teacher"] = teacher.module
        return networks

    def write_snapshots(self, epochs_done: int) -> None:
        for name, network in self.snapshot_networks().items():
            checkpoint = {"network_weights": network.state_dict(), "trainer_name": self.__class__.__name__,
                          "init_args": self.my_init_kwargs, "current_epoch": epochs_done,
                          "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes}
            path = Path(self.output_folder) / SNAPSHOT_FOLDER / snapshot_name(epochs_done, name)
            write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))
