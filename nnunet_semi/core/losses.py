"""Losses on soft (continuous) targets, with nnU-Net's deep supervision."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean over samples and classes of 2 sum(P L) / (sum P + sum L), P = softmax(logits), L soft target
    with the same shape; background included (SRA-Seg eq. 13)."""
    probabilities = torch.softmax(logits.float(), 1)
    axes = tuple(range(2, logits.ndim))
    intersection = (probabilities * target).sum(axes)
    denominator = probabilities.sum(axes) + target.sum(axes)
    return 1 - ((2 * intersection + smooth) / (denominator + smooth)).mean()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-mean over voxels of sum_c L_c log P_c (SRA-Seg eq. 14)."""
    return -(target * torch.log_softmax(logits.float(), 1)).sum(1).mean()


class SoftDiceCELoss(nn.Module):
    """Soft Dice + soft cross-entropy for continuous label maps such as blended copy-paste labels."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target) + soft_cross_entropy(logits, target)


def soft_targets_for_outputs(target: torch.Tensor, outputs) -> list[torch.Tensor] | torch.Tensor:
    """Downsample a soft (B, C, *spatial) target to every deep-supervision output by averaging (area
    interpolation), so each low-resolution target keeps the class fractions of the voxels it covers."""
    if not isinstance(outputs, (list, tuple)):
        return target
    return [target if o.shape[2:] == target.shape[2:] else F.interpolate(target, size=o.shape[2:], mode="area")
            for o in outputs]
