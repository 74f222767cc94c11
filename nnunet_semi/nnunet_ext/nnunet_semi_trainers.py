"""Entry point for nnU-Net's trainer lookup (``nnUNet_extTrainer``): see ``nnunet_semi.env``.

nnU-Net finds ``-tr NAME`` with ``hasattr`` on this module: every trainer of ``nnunet_semi.trainers`` is here, and
names of the form ``<Trainer>_<E>epochs`` or ``<Trainer>_<E>epochs_<I>its`` resolve to budget variants of any
trainer (ours or nnU-Net's) through the module-level ``__getattr__``.
"""
from nnunet_semi.trainers import *  # noqa: F401,F403
from nnunet_semi.trainers import budget_variant_from_name as __getattr__  # noqa: F401
