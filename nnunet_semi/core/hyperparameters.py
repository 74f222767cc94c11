"""Hyperparameters as class attributes, and training-budget variants of any trainer.

nnU-Net assigns its hyperparameters (``num_epochs``, ``initial_lr``, ...) as instance attributes inside
``nnUNetTrainer.__init__``, so a subclass has to copy the constructor to change one. :class:`ClassHyperparameters`
re-applies class-level values after ``super().__init__``: a variant is then one line,
``class MyTrainer_5epochs(MyTrainer): num_epochs = 5``, and the constructor signature stays nnU-Net's (nnU-Net
rebuilds trainers from it, so trainers never take extra arguments).
"""
from __future__ import annotations

import functools
import re

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semi.core.snapshots import WeightSnapshots
from nnunet_semi.core.time_limit import WallClockLimit
from nnunet_semi.errors import UserError

# instance attributes that nnUNetTrainer.__init__ sets and a class attribute may override
NNUNET_HYPERPARAMETERS = (
    "initial_lr", "weight_decay", "oversample_foreground_percent", "probabilistic_oversampling",
    "num_iterations_per_epoch", "num_val_iterations_per_epoch", "num_epochs", "enable_deep_supervision",
    "save_every",
)
# the names budget_variant_name gives: <Trainer>_<E>epochs or <Trainer>_<E>epochs_<I>its
BUDGET_NAME = re.compile(r"(?P<base>\w+?)(?P<budget>_(?P<epochs>\d+)epochs(?:_(?P<iterations>\d+)its)?)")
# nnU-Net runs 50 validation iterations per 250 training iterations; budget variants keep that ratio
VALIDATION_ITERATIONS_PER_TRAINING_ITERATION = 50 / 250


def split_budget(trainer_name: str) -> tuple[str, str]:
    """``'X_20epochs_50its'`` -> ``('X', '_20epochs_50its')``; a name without a budget -> ``(name, '')``."""
    match = BUDGET_NAME.fullmatch(trainer_name)
    return (match["base"], match["budget"]) if match else (trainer_name, "")


class ClassHyperparameters:
    """Mixin for nnU-Net trainers: class attributes named like nnU-Net hyperparameters take effect."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name in NNUNET_HYPERPARAMETERS:
            value = getattr(type(self), name, None)
            if value is not None:
                setattr(self, name, value)
        self.validate_hyperparameters()

    def validate_hyperparameters(self) -> None:
        """Check the class-attribute hyperparameters at construction (before any training); subclasses extend it
        with ``super().validate_hyperparameters()`` and :meth:`require`."""

    def require(self, name: str, condition: bool, requirement: str) -> None:
        """Stop with a message naming the trainer, the hyperparameter, its value and what it must be."""
        if not condition:
            raise UserError(f"{type(self).__name__}.{name} = {getattr(self, name)!r} is invalid: it must be "
                            f"{requirement}. Fix the class attribute of your trainer variant.")


def budget_variant_name(base_name: str, num_epochs: int, num_iterations_per_epoch: int | None = None) -> str:
    suffix = f"_{num_epochs}epochs" + (f"_{num_iterations_per_epoch}its" if num_iterations_per_epoch else "")
    return base_name + suffix


@functools.lru_cache(maxsize=None)
def budget_variant(base: type, num_epochs: int, num_iterations_per_epoch: int | None = None) -> type:
    """``base`` trained for ``num_epochs`` x ``num_iterations_per_epoch`` (validation iterations scaled alike), with
    :class:`~nnunet_semi.core.time_limit.WallClockLimit`'s optional deadline and ``training_summary.json``, and
    :class:`~nnunet_semi.core.snapshots.WeightSnapshots`' optional learning-curve snapshots."""
    if not (isinstance(base, type) and issubclass(base, nnUNetTrainer)):
        raise TypeError(f"{base!r} is not an nnU-Net trainer class")
    if num_epochs < 1 or (num_iterations_per_epoch is not None and num_iterations_per_epoch < 1):
        raise ValueError("a training budget needs at least one epoch and one iteration per epoch")
    attributes = {"__module__": __name__, "num_epochs": num_epochs, "save_every": 1,
                  "__doc__": f"{base.__name__} with a training budget of {num_epochs} epochs"}
    if num_iterations_per_epoch is not None:
        attributes["num_iterations_per_epoch"] = num_iterations_per_epoch
        attributes["num_val_iterations_per_epoch"] = max(
            1, round(num_iterations_per_epoch * VALIDATION_ITERATIONS_PER_TRAINING_ITERATION))
        attributes["__doc__"] += f" x {num_iterations_per_epoch} iterations"
    bases = (*(m for m in (WeightSnapshots, WallClockLimit, ClassHyperparameters) if not issubclass(base, m)), base)
    name = budget_variant_name(base.__name__, num_epochs, num_iterations_per_epoch)
    return type(name, bases, attributes)
