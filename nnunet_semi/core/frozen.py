"""Frozen pretrained parts of a network: no gradient, not in the optimiser, not in the EMA, always in eval mode."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class FrozenPart(nn.Module):
    """Wraps a pretrained module (for example a Stable-Diffusion VAE) that never trains.

    * Its tensors never require gradients, so nnU-Net's optimiser, gradient clipping and the EMA teacher skip them
      (:func:`trainable_parameters`); the teacher shares the part with the student instead of copying it.
    * ``train()`` never switches it out of eval mode (BatchNorm / dropout stay fixed).
    * ``in_checkpoint=False``: its parameters and buffers become non-persistent buffers, so ``state_dict()`` (and
      with it ``network_weights`` and every checkpoint) leaves them out. Use this for weights reproducible from a
      named ``source``; the network must then load them whenever it is built, also inside ``nnUNetv2_predict``
      (see :mod:`nnunet_semi.core.network`). ``in_checkpoint=True`` keeps them in checkpoints (frozen, but e.g.
      loaded once in :meth:`nnUNetTrainerSemi.load_pretrained_parts`).
    """

    def __init__(self, module: nn.Module, source: str, in_checkpoint: bool = False):
        super().__init__()
        self.source = source
        self.in_checkpoint = in_checkpoint
        if not in_checkpoint:
            for submodule in module.modules():
                _make_non_persistent(submodule)
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenPart":
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, in_checkpoint={self.in_checkpoint}"


def _make_non_persistent(module: nn.Module) -> None:
    """Turn a module's own parameters into buffers and every own buffer into a non-persistent one."""
    for name, parameter in list(module._parameters.items()):
        if parameter is not None:
            del module._parameters[name]
            module.register_buffer(name, parameter.detach(), persistent=False)
    module._non_persistent_buffers_set.update(name for name, b in module._buffers.items() if b is not None)


def frozen_parts(module: nn.Module) -> list[FrozenPart]:
    return [m for m in module.modules() if isinstance(m, FrozenPart)]


def trainable_parameters(module: nn.Module) -> Iterator[torch.nn.Parameter]:
    """The parameters that train: every one that requires a gradient."""
    return (p for p in module.parameters() if p.requires_grad)


def keep_frozen_parts_out_of_ddp(module: nn.Module) -> None:
    """Before ``module`` is wrapped in DistributedDataParallel: let DDP ignore the tensors of its frozen parts.
    Every rank loads them from the same source and they never change, so DDP's broadcast of buffers before every
    forward pass would only cost bandwidth (a Stable-Diffusion VAE is about 330 MB)."""
    names = [f"{prefix}.{name}" if prefix else name
             for prefix, part in module.named_modules() if isinstance(part, FrozenPart)
             for name, _ in [*part.named_parameters(), *part.named_buffers()]]
    if names:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
