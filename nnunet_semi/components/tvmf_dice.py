"""Adaptive t-vMF Dice loss (Kato & Hotta, "Adaptive t-vMF dice loss: An effective expansion of dice loss for
medical image segmentation", Computers in Biology and Medicine 2024), as SSGNet (Ma et al., BMVC 2025) uses it.

For every class c, the prediction map p_c and the target map y_c over the whole batch are L2-normalised and compared
by their cosine; the t-vMF similarity of that cosine with concentration kappa_c replaces Dice:

    phi_c = (1 + cos_c) / (1 + kappa_c (1 - cos_c)) - 1,     L = mean_c (1 - phi_c)^2

kappa = 0 gives phi = cos (a cosine Dice); a larger kappa makes the similarity sharper, so well-segmented classes are
pushed further. The adaptive version sets kappa_c = lambda * Dice_c from each class's validation Dice after every
epoch (lambda = 32 in the released code). A class absent from the batch's target has cos = 0: a constant term
without gradient (as in the released code); cross-entropy, which the trainer adds, penalises its false positives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semi.components.soft_losses import one_hot


def tvmf_similarity(cosine: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """phi = (1 + cos) / (1 + kappa (1 - cos)) - 1, elementwise (the t-vMF similarity)."""
    return (1 + cosine) / (1 + kappa * (1 - cosine)) - 1


def class_cosines(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine between prediction and target map of every class over the whole batch: (B, C, *spatial) twice ->
    (C,)."""
    prediction = F.normalize(probabilities.float().movedim(1, 0).flatten(1), dim=1)
    reference = F.normalize(target.float().movedim(1, 0).flatten(1), dim=1)
    return (prediction * reference).sum(1)


def tvmf_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """mean_c (1 - phi(cos_c, kappa_c))^2 for probabilities and one-hot (or region) targets (B, C, *spatial),
    kappa (C,)."""
    return ((1 - tvmf_similarity(class_cosines(probabilities, target), kappa)) ** 2).mean()


class TvMFDiceLoss(nn.Module):
    """t-vMF Dice on nnU-Net outputs, a drop-in for the Dice term of nnU-Net's DC_and_CE / DC_and_BCE losses:
    logits (B, C, *spatial), targets as label maps (B, 1, *spatial) or region maps of the logits' shape, optional
    ``loss_mask`` (B, 1, *spatial) of valid (non-ignore) voxels.

    Classes scored are nnU-Net's foreground classes (background excluded, as in nnU-Net's Dice), or every region
    (``regions``: sigmoid per region instead of softmax). ``kappa`` (one per class scored) is a buffer the trainer
    updates.
    """

    def __init__(self, num_outputs: int, regions: bool = False, initial_kappa: float = 0.0):
        super().__init__()
        if num_outputs < 1 or initial_kappa < 0:
            raise ValueError(f"num_outputs must be >= 1 and initial_kappa >= 0, got {num_outputs}, {initial_kappa}")
        self.regions = regions
        self.first_scored = 0 if regions else 1
        self.register_buffer("kappa", torch.full((num_outputs - self.first_scored,), float(initial_kappa)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        probabilities = torch.sigmoid(logits) if self.regions else torch.softmax(logits, 1)
        reference = target.float() if target.shape == logits.shape else one_hot(target, logits.shape[1])
        if loss_mask is not None:
            probabilities, reference = probabilities * loss_mask, reference * loss_mask
        first = self.first_scored
        return tvmf_dice_loss(probabilities[:, first:], reference[:, first:], self.kappa)

    def set_kappa_from_dice(self, dice_per_class, scale: float) -> None:
        """kappa_c = scale * Dice_c (adaptive t-vMF; a NaN Dice, a class absent from validation, gives 0)."""
        dice = torch.nan_to_num(torch.as_tensor(dice_per_class, dtype=torch.float32), nan=0.0)
        if dice.shape != self.kappa.shape:
            raise ValueError(f"expected {self.kappa.numel()} Dice values (classes scored), got {dice.numel()}")
        self.kappa.copy_(scale * dice.clamp(0, 1))
