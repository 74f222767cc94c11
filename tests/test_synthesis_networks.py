"""StyleGAN2 generator / discriminator: shapes, gradients, and the modulation equations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_semi.synthesis.networks import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    ModulatedConv2d,
    downsample2d,
    minibatch_stddev,
)

TINY = dict(channel_base=128, channel_max=16)


def tiny_generator(resolution: int = 16, channels: int = 3) -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(resolution=resolution, img_channels=channels, z_dim=8, w_dim=8, **TINY))


def tiny_discriminator(resolution: int = 16, channels: int = 3) -> Discriminator:
    torch.manual_seed(1)
    return Discriminator(DiscriminatorConfig(resolution=resolution, img_channels=channels, **TINY))


@pytest.mark.parametrize("resolution,channels", [(8, 1), (16, 3), (32, 1)])
def test_generator_and_discriminator_shapes(resolution, channels):
    g, d = tiny_generator(resolution, channels), tiny_discriminator(resolution, channels)
    images = g(torch.randn(5, 8))
    assert images.shape == (5, channels, resolution, resolution)
    assert torch.isfinite(images).all()
    assert d(images).shape == (5,)
    assert g.num_ws == 1 + 2 * (int(math.log2(resolution)) - 2)


def test_gradients_reach_every_parameter():
    g, d = tiny_generator(), tiny_discriminator()
    d(g(torch.randn(4, 8), noise_mode="random")).sum().backward()
    for name, p in list(g.named_parameters()) + list(d.named_parameters()):
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # noise strengths start at 0 but must still receive gradient (otherwise noise could never be learned)
    assert any(p.grad.abs().sum() > 0 for n, p in g.named_parameters() if n.endswith("noise_strength"))


def test_modulation_and_demodulation_match_stylegan2_equations():
    """Activation scaling must equal StyleGAN2 Eq. 1 + 3 applied to per-sample weights."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 6, 3, w_dim=5)
    x, w = torch.randn(2, 4, 7, 7), torch.randn(2, 5)
    out = conv(x, w)
    styles = conv.affine(w)
    for n in range(2):
        weight = conv.weight * conv.weight_gain * styles[n][None, :, None, None]  # Eq. 1
        weight = weight / torch.sqrt(weight.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)  # Eq. 3
        expected = F.conv2d(x[n:n + 1], weight, padding=1)
        torch.testing.assert_close(out[n:n + 1], expected, rtol=1e-4, atol=1e-5)


def test_demodulation_keeps_unit_variance():
    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 64, 3, w_dim=16)
    out = conv(torch.randn(8, 64, 16, 16), torch.randn(8, 16) * 3)
    assert 0.7 < out.std().item() < 1.3


def test_truncation_pulls_towards_average_w():
    g = tiny_generator()
    g.mapping.w_avg.copy_(torch.randn(8))
    z = torch.randn(3, 8)
    w = g.mapping(z)
    torch.testing.assert_close(g.mapping(z, truncation_psi=0.0), g.mapping.w_avg.expand(3, -1))
    torch.testing.assert_close(g.mapping(z, truncation_psi=0.5), (w + g.mapping.w_avg) / 2)


def test_const_noise_is_deterministic_and_random_noise_is_not():
    g = tiny_generator()
    for block in g.blocks:
        for layer in block.layers:
            layer.noise_strength.data.fill_(1.0)
    z = torch.randn(2, 8)
    torch.testing.assert_close(g(z, noise_mode="const"), g(z, noise_mode="const"))
    assert not torch.allclose(g(z, noise_mode="random"), g(z, noise_mode="random"))


def test_seeded_noise_reproduces_an_image_whatever_the_batch():
    g = tiny_generator()
    for block in g.blocks:
        for layer in block.layers:
            layer.noise_strength.data.fill_(1.0)
    z = torch.randn(3, 8)
    batch = g(z, noise=g.seeded_noise([5, 6, 7]))
    alone = g(z[1:2], noise=g.seeded_noise([6]))
    torch.testing.assert_close(batch[1:2], alone)
    other_noise = g(z[1:2], noise=g.seeded_noise([8]))
    assert not torch.allclose(alone, other_noise)
    assert [n.shape[-1] for n in g.seeded_noise([0])] == [4, 8, 8, 16, 16]


def test_minibatch_stddev_appends_group_statistic():
    x = torch.randn(6, 3, 4, 4)
    out = minibatch_stddev(x, group_size=4)  # 6 is not divisible by 4: largest divisor <= 4 is 3
    assert out.shape == (6, 4, 4, 4)
    groups = x.reshape(3, 2, 3, 4, 4)
    expected = (groups.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])
    torch.testing.assert_close(out[:, 3, 0, 0], expected.repeat(3))


def test_downsample_is_normalised_blur():
    x = torch.ones(1, 2, 8, 8)
    out = downsample2d(x)
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))  # interior: weights sum to 1


def test_non_power_of_two_resolution_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        Generator(GeneratorConfig(resolution=48, **TINY))
