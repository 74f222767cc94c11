"""Exponential-moving-average teacher, robust to DDP and torch.compile wrappers."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_semi.core.frozen import frozen_parts


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and ``torch.compile`` wrappers (shares parameters, copies nothing)."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


class EMATeacher:
    """theta_t <- a * theta_t + (1 - a) * theta_s (Tarvainen & Valpola 2017, sec. 2).

    The decay is warmed up as a_k = min(1 - 1 / (k + 1), a) for the k-th update, as in the Mean Teacher code, so the
    teacher does not remember the random initialisation. Buffers (e.g. BatchNorm statistics) are copied from the
    student. Under DDP every rank holds identical student weights after each step, so every rank's teacher is
    identical without communication. Frozen parts (:class:`~nnunet_semi.core.frozen.FrozenPart`) are shared with the
    student, never copied or averaged; other parameters that do not train are copied once and never averaged.
    """

    def __init__(self, student: nn.Module, decay: float):
        self.decay = decay
        student = unwrap_network(student)
        shared = {id(part): part for part in frozen_parts(student)}
        self.module = copy.deepcopy(student, memo=shared).requires_grad_(False).eval()

    def decay_at(self, update_index: int) -> float:
        return min(1.0 - 1.0 / (update_index + 1), self.decay)

    @torch.no_grad()
    def update(self, student: nn.Module, update_index: int) -> None:
        student = unwrap_network(student)
        weight_of_student = 1.0 - self.decay_at(update_index)
        pairs = [(t, s.detach()) for t, s in zip(self.module.parameters(), student.parameters()) if s.requires_grad]
        if pairs:
            torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], weight_of_student)
        for t, s in zip(self.module.buffers(), student.buffers()):
            if t is not s:  # frozen parts are shared
                t.copy_(s)

    def __call__(self, x: torch.Tensor):
        return self.module(x)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
