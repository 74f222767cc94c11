"""Losses on soft (continuous) targets, with nnU-Net's deep supervision."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


DICE_REDUCTIONS = ("batch", "sample")


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) integer labels -> (B, C, *spatial) float one-hot."""
    return F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "batch",
                   smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice loss of logits (B, C, *spatial) against a soft target of the same shape, P = softmax(logits),
    background included.

    ``'batch'`` (SRA-Seg eq. 13, nnU-Net's batch Dice): 1 - mean_c 2 sum_i P_ic L_ic / (sum_i P_ic + sum_i L_ic),
    sums over every voxel i of the batch. ``'sample'`` (the released code): the same ratio per sample, averaged
    over samples and classes.
    """
    if reduction not in DICE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {DICE_REDUCTIONS}, not {reduction!r}")
    probabilities = torch.softmax(logits.float(), 1)
    axes = tuple(range(2, logits.ndim)) if reduction == "sample" else (0, *range(2, logits.ndim))
    intersection = (probabilities * target).sum(axes)
    denominator = probabilities.sum(axes) + target.sum(axes)
    return 1 - ((2 * intersection + smooth) / (denominator + smooth)).mean()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-mean over voxels of sum_c L_c log P_c (SRA-Seg eq. 14)."""
    return -(target * torch.log_softmax(logits.float(), 1)).sum(1).mean()


class SoftDiceCELoss(nn.Module):
    """Soft Dice (``reduction`` as in :func:`soft_dice_loss`) + soft cross-entropy for continuous label maps such
    as blended copy-paste labels."""

    def __init__(self, dice_reduction: str = "batch"):
        super().__init__()
        if dice_reduction not in DICE_REDUCTIONS:
            raise ValueError(f"dice_reduction must be one of {DICE_REDUCTIONS}, not {dice_reduction!r}")
        self.dice_reduction = dice_reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, self.dice_reduction) + soft_cross_entropy(logits, target)


def soft_targets_for_outputs(target: torch.Tensor, outputs) -> list[torch.Tensor] | torch.Tensor:
    """Downsample a soft (B, C, *spatial) target to every deep-supervision output by averaging (area
    interpolation), so each low-resolution target keeps the class fractions of the voxels it covers."""
    if not isinstance(outputs, (list, tuple)):
        return target
    return [target if o.shape[2:] == target.shape[2:] else F.interpolate(target, size=o.shape[2:], mode="area")
            for o in outputs]
