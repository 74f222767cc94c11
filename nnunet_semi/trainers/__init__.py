"""Our trainers, found without a hand-kept list: every ``nnUNetTrainer`` subclass defined in a module of this
package is exported under its class name. Stock nnU-Net finds them through ``nnunet_semi.env``.

Names of the form ``<Trainer>_<E>epochs`` or ``<Trainer>_<E>epochs_<I>its`` resolve (module ``__getattr__``) to
budget variants of any trainer, ours or nnU-Net's.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semi.core.hyperparameters import BUDGET_NAME, budget_variant


def _discover_trainers() -> dict[str, type]:
    trainers = {}
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        module = importlib.import_module(info.name)
        for name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, nnUNetTrainer) and value.__module__ == module.__name__:
                trainers[name] = value
    return trainers


TRAINERS: dict[str, type] = _discover_trainers()
globals().update(TRAINERS)
__all__ = sorted(TRAINERS)


def find_trainer_class(name: str) -> type:
    """Our trainers and nnU-Net's base trainer by name, ``<Trainer>_<E>epochs_<I>its`` budget variants (a form
    nnU-Net ships none of), else nnU-Net's own lookup (its folder, then ``nnUNet_extTrainer``).

    The first three never run nnU-Net's lookup: in nnU-Net 2.8.1 it iterates ``sys.modules`` while reading each
    module's ``__file__`` / ``__path__``, which fails ("dictionary changed size during iteration") in a process that
    has imported a package with lazily loaded submodules (``transformers``, pulled in by our imports where it is
    installed, as on the GPU kit's machine). ``nnUNetv2_train`` and ``nnUNetv2_predict`` find the same classes in
    their own processes."""
    if name in TRAINERS:
        return TRAINERS[name]
    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    match = BUDGET_NAME.fullmatch(name)
    if match is not None and match["iterations"]:
        return budget_variant_from_name(name)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    return recursive_find_trainer_class_by_name(name)


def budget_variant_from_name(name: str) -> type:
    """``nnUNetTrainerMeanTeacher_5epochs_20its`` -> that trainer with a 5 x 20 iteration budget."""
    match = BUDGET_NAME.fullmatch(name)
    if match is None:
        raise AttributeError(name)
    iterations = match["iterations"]
    return budget_variant(find_trainer_class(match["base"]), int(match["epochs"]),
                          int(iterations) if iterations else None)


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return budget_variant_from_name(name)
