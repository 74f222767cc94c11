"""Losses (non-saturating, R1) and adaptive discriminator augmentation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnunet_semi.synthesis.augment import AdaptiveAugment, AugmentConfig, ada_p_update
from nnunet_semi.synthesis.losses import (
    default_r1_gamma,
    discriminator_loss,
    generator_loss,
    path_length_penalty,
    r1_penalty,
)
from nnunet_semi.synthesis.networks import Generator, GeneratorConfig


def test_non_saturating_losses_match_log_sigmoid():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected_g = -torch.log(torch.sigmoid(fake)).mean()
    expected_d = -torch.log(1 - torch.sigmoid(fake)).mean() - torch.log(torch.sigmoid(real)).mean()
    torch.testing.assert_close(generator_loss(fake), expected_g)
    torch.testing.assert_close(discriminator_loss(real, fake), expected_d)


class Quadratic(nn.Module):
    """D(x) = sum_i a_i x_i^2 + b . x: its input gradient 2 a x + b is easy to write down by hand."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.b = nn.Parameter(torch.tensor([0.5, 3.0]))

    def forward(self, x):
        return (self.a * x.square() + self.b * x).sum(dim=1)


def test_r1_matches_hand_computed_value_and_gradient():
    d = Quadratic()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])
    penalty, logits = r1_penalty(d, x, gamma=10.0)
    # grad_x D = 2 a x + b: image 1 -> (2*1*1 + 0.5, 2*-2*2 + 3) = (2.5, -5); image 2 -> (-1.5, 3)
    # ||.||^2 = 6.25 + 25 = 31.25 and 2.25 + 9 = 11.25; mean 21.25; gamma / 2 * 21.25 = 106.25
    assert penalty.item() == pytest.approx(106.25)
    torch.testing.assert_close(logits, torch.tensor([1 - 8 + 0.5 + 6, 1 - 0.5]))
    penalty.backward()
    # d/da_1 of 5 * mean_n (2 a_1 x_n1 + b_1)^2 = 5 * mean_n 2 (2 a_1 x_n1 + b_1) * 2 x_n1
    #   = 5 * (2 * 2.5 * 2 * 1 + 2 * -1.5 * 2 * -1) / 2 = 5 * (10 + 6) / 2 = 40
    assert d.a.grad[0].item() == pytest.approx(40.0)


def test_r1_is_zero_for_constant_discriminator():
    penalty, _ = r1_penalty(lambda x: x.sum(dim=[1, 2, 3]) * 0 + 1, torch.randn(2, 1, 4, 4), gamma=1.0)
    assert penalty.item() == 0.0


def test_default_gamma_heuristic():
    assert default_r1_gamma(64, 32) == pytest.approx(0.0002 * 64 * 64 / 32)


def test_ada_p_update_rule():
    # overfitting (r_t above target): p rises by batch / (ada_kimg * 1000)
    assert float(ada_p_update(0.0, rt=0.9, target=0.6, num_images=128, ada_kimg=100)) == pytest.approx(128 / 100_000)
    # below target: falls, and is clipped at 0 and 1
    assert float(ada_p_update(0.5, rt=0.2, target=0.6, num_images=1000, ada_kimg=1)) == 0.0
    assert float(ada_p_update(0.5, rt=1.0, target=0.6, num_images=1000, ada_kimg=1)) == 1.0
    p = ada_p_update(0.3, rt=0.1, target=0.6, num_images=64, ada_kimg=500)
    assert float(p) == pytest.approx(0.3 - 64 / 500_000)
    assert float(ada_p_update(0.3, rt=0.6, target=0.6, num_images=64, ada_kimg=500)) == pytest.approx(0.3)


def test_augment_is_identity_at_p_zero_and_differentiable_otherwise():
    aug = AdaptiveAugment()
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    assert aug(x) is x
    aug.set_p(0.8)
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def only(**enabled) -> AugmentConfig:
    zero = {name: 0.0 for name in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
                                   "contrast", "lumaflip", "hue", "saturation")}
    return AugmentConfig(**{**zero, **enabled})


def test_integer_transforms_are_exact():
    aug = AdaptiveAugment(only(xflip=1.0), rgb=False)
    aug.set_p(1.0)
    x = torch.rand(64, 1, 8, 8)
    y = aug(x)
    flipped = torch.isclose(y, x.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(y, x, atol=1e-5).flatten(1).all(1)
    assert (flipped | same).all() and flipped.any() and same.any()


def test_augment_probability_controls_fraction_of_changed_images():
    aug = AdaptiveAugment(only(brightness=1.0), rgb=False)
    aug.set_p(0.3)
    torch.manual_seed(0)
    x = torch.zeros(4000, 1, 2, 2)
    changed = (aug(x).abs().flatten(1).amax(1) > 0).float().mean().item()
    assert changed == pytest.approx(0.3, abs=0.03)


def test_hue_rotation_keeps_grey_pixels():
    aug = AdaptiveAugment(only(hue=1.0), rgb=True)
    aug.set_p(1.0)
    grey = torch.full((8, 3, 4, 4), 0.3)
    torch.testing.assert_close(aug(grey), grey, atol=1e-5, rtol=0)
    colour = torch.rand(8, 3, 4, 4)
    out = aug(colour)
    # rotation about the luma axis keeps the mean of R, G, B
    torch.testing.assert_close(out.mean(dim=1), colour.mean(dim=1), atol=1e-5, rtol=0)
    assert math.isfinite(out.sum().item())


def test_path_length_penalty_by_hand():
    """images = s * ws (1 x 1 x 2), y = (3, 4) / sqrt(2): length = s * sqrt(12.5); a moves 1 % towards it;
    penalty = (length - a_new)^2 and d/ds = 2 (length - a_new) sqrt(12.5), with a_new held constant."""
    scale = torch.tensor(1.0, requires_grad=True)
    ws = torch.tensor([[[1.0, 2.0]]])
    noise = torch.tensor([[[[3.0, 4.0]]]])
    penalty, new_mean = path_length_penalty(lambda w: scale * w.reshape(1, 1, 1, 2), ws, torch.tensor(1.0), 0.01,
                                            noise=noise)
    length = math.sqrt(12.5)
    expected_mean = 1.0 + 0.01 * (length - 1.0)
    assert new_mean.item() == pytest.approx(expected_mean)
    assert penalty.item() == pytest.approx((length - expected_mean) ** 2)
    penalty.backward()
    assert scale.grad.item() == pytest.approx(2 * (length - expected_mean) * length)


def test_path_length_penalty_reaches_the_generator():
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(resolution=8, img_channels=1, z_dim=8, w_dim=8, mapping_layers=1,
                                          channel_base=64, channel_max=16))
    ws = generator.map(torch.randn(2, 8))
    penalty, new_mean = path_length_penalty(generator.synthesize, ws, torch.tensor(0.0), 0.01)
    penalty.backward()
    # biases and the constant input do not change the Jacobian; the weights of the modulated convolutions and
    # (through ws, as in the official code) of the mapping network do
    weights = [p.grad for name, p in generator.named_parameters() if name.endswith("weight")]  # mapping too
    assert new_mean > 0 and weights and all(g is not None and g.abs().sum() > 0 for g in weights)
