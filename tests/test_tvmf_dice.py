"""The adaptive t-vMF Dice loss against hand-computed values, its kappa update, and its place in nnU-Net's loss."""
from __future__ import annotations

import math

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_semi.components.tvmf_dice import TvMFDiceLoss, class_cosines, tvmf_dice_loss, tvmf_similarity


@pytest.mark.parametrize("kappa, expected", [(0.0, (1 - 0.6) ** 2), (2.0, (1 - (1.6 / 1.8 - 1)) ** 2)])
def test_tvmf_dice_hand_value(kappa, expected):
    probabilities = torch.tensor([0.6, 0.8]).view(1, 1, 2)  # unit norm already
    target = torch.tensor([1.0, 0.0]).view(1, 1, 2)          # cos = 0.6
    assert tvmf_dice_loss(probabilities, target, torch.tensor([kappa])).item() == pytest.approx(expected)


def test_similarity_is_cosine_at_kappa_zero_and_sharper_for_larger_kappa():
    cosine = torch.tensor([0.2, 0.9, 1.0])
    assert torch.allclose(tvmf_similarity(cosine, torch.tensor(0.0)), cosine)
    sharp = tvmf_similarity(cosine, torch.tensor(8.0))
    assert sharp[2] == 1 and torch.all(sharp[:2] < cosine[:2])


def test_loss_on_label_maps_scores_foreground_over_the_whole_batch():
    # two samples, 2 pixels each; foreground probabilities 0.75 / 0.25 from logits (0, ln 3) / (ln 3, 0)
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(3), 0.0]]]).permute(0, 2, 1).reshape(1, 2, 2)
    logits = torch.stack((logits[0], logits[0]))  # (B=2, C=2, 2)
    labels = torch.tensor([[[1, 0]], [[1, 1]]])
    foreground = torch.tensor([0.75, 0.25, 0.75, 0.25])
    reference = torch.tensor([1.0, 0.0, 1.0, 1.0])
    cosine = (foreground @ reference) / (foreground.norm() * reference.norm())
    loss = TvMFDiceLoss(2, initial_kappa=4.0)(logits, labels)
    assert loss.item() == pytest.approx(((1 - tvmf_similarity(cosine, torch.tensor(4.0))) ** 2).item(), abs=1e-6)
    assert torch.allclose(class_cosines(foreground.view(1, 1, 4), reference.view(1, 1, 4)), cosine.view(1))


def test_adaptive_kappa_is_lambda_times_validation_dice():
    loss = TvMFDiceLoss(3)
    assert loss.kappa.tolist() == [0.0, 0.0]  # foreground classes only, cosine Dice before any validation
    loss.set_kappa_from_dice([0.5, float("nan")], 32.0)
    assert loss.kappa.tolist() == [16.0, 0.0]
    with pytest.raises(ValueError, match="expected 2 Dice values"):
        loss.set_kappa_from_dice([0.5], 32.0)


def test_drop_in_for_nnunet_dice_with_ignore_label_and_deep_supervision():
    combined = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, 1, 1,
                              ignore_label=2, dice_class=MemoryEfficientSoftDiceLoss)
    combined.dc = TvMFDiceLoss(2, initial_kappa=8.0)
    loss = DeepSupervisionWrapper(combined, [1.0, 0.5])
    torch.manual_seed(0)
    logits = [torch.randn(2, 2, 8, 8, requires_grad=True), torch.randn(2, 2, 4, 4, requires_grad=True)]
    labels = torch.randint(0, 2, (2, 1, 8, 8))
    labels[:, :, :2] = 2  # ignore
    targets = [labels, labels[:, :, ::2, ::2]]
    value = loss(logits, targets)
    value.backward()
    assert torch.isfinite(value) and logits[0].grad[:, :, 2:].abs().sum() > 0
    assert logits[0].grad[:, :, :2].abs().sum() == 0  # ignored voxels get no gradient from CE or t-vMF Dice
