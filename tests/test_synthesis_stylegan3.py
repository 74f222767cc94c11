"""StyleGAN3-T: filter design, layer schedule and resampling against hand-computed values, and translation
equivariance (the paper's EQ-T, on a small scale) of a tiny generator."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import firwin

from nnunet_semi.synthesis.filters import gaussian_blur, kaiser_beta, lowpass_filter, upfirdn2d
from nnunet_semi.synthesis.stylegan3 import StyleGAN3Config, StyleGAN3Generator, layer_schedule


def test_kaiser_beta_hand_values():
    # A = 2.285 (N - 1) pi (width / nyquist) + 7.95
    a = 2.285 * 11 * math.pi * (8 / 16) + 7.95  # 47.43 dB: middle branch
    assert kaiser_beta(12, 8, 32) == pytest.approx(0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21))
    a = 2.285 * 23 * math.pi * (8 / 16) + 7.95  # 90.5 dB
    assert kaiser_beta(24, 8, 32) == pytest.approx(0.1102 * (a - 8.7))
    assert kaiser_beta(3, 1, 32) == 0.0  # A < 21: rectangular window


def test_lowpass_filter_hand_value_and_scipy():
    # 3 taps, cutoff fs / 4, rectangular window: h ~ 0.5 sinc(0.5 [-1, 0, 1]) = [1/pi, 1/2, 1/pi], sum 1
    h = lowpass_filter(3, cutoff=8, width=1, fs=32)
    expected = np.array([1 / math.pi, 0.5, 1 / math.pi]) / (0.5 + 2 / math.pi)
    np.testing.assert_allclose(h.numpy(), expected, rtol=1e-6)
    for numtaps, cutoff, width, fs in [(12, 2, 12, 32), (12, 5.66, 20.7, 64), (24, 16, 7.4, 64)]:
        np.testing.assert_allclose(lowpass_filter(numtaps, cutoff, width, fs).numpy(),
                                   firwin(numtaps, cutoff, width=width, fs=fs), atol=1e-6)
    assert torch.equal(lowpass_filter(1, 2, 1, 32), torch.ones(1))


def test_layer_schedule_hand_values():
    cfg = StyleGAN3Config(resolution=16, img_channels=3, channel_base=64, channel_max=8, num_layers=4,
                          num_critical=2)
    levels = layer_schedule(cfg)
    # e = min(i / 2, 1) = 0, .5, 1, 1, 1: cutoffs 2 * 4^e, stopbands 2^(2.1 + 1.2 e)
    assert [lv.cutoff for lv in levels] == pytest.approx([2, 4, 8, 8, 8])
    assert [lv.stopband for lv in levels] == pytest.approx([2 ** 2.1, 2 ** 2.7, 2 ** 3.3, 2 ** 3.3, 2 ** 3.3])
    assert [lv.sampling_rate for lv in levels] == [16] * 5  # 2 * stopband rounded up to a power of 2, at most 16
    assert [lv.half_width for lv in levels] == pytest.approx([8 - 2, 8 - 4, 2 ** 3.3 - 8, 2 ** 3.3 - 8, 2 ** 3.3 - 8])
    assert [lv.size for lv in levels] == [36, 36, 36, 16, 16]  # margin 10, last two critically sampled
    assert [lv.channels for lv in levels] == [8, 8, 4, 4, 3]  # min(64 / 2 / cutoff, 8), RGB last


def test_upfirdn2d_up_down_and_padding():
    x = torch.ones(1, 1, 4, 4)
    taps = torch.tensor([0.25, 0.5, 0.25])
    up = upfirdn2d(x, taps, up=2, padding=(1, 1), gain=4)  # zero-stuffed ones, interpolated: ones inside
    assert up.shape == (1, 1, 8, 8) and torch.allclose(up[..., 1:-1, 1:-1], torch.ones(6, 6))
    ramp = torch.arange(8.0).repeat(8, 1)[None, None]
    assert torch.equal(upfirdn2d(ramp, torch.ones(1), down=2), ramp[..., ::2, ::2])
    assert upfirdn2d(ramp, torch.ones(1), padding=(-1, -2)).shape == (1, 1, 5, 5)  # negative padding crops


def reference_upfirdn_1d(signal: np.ndarray, taps: np.ndarray, up: int, down: int, lo: int, hi: int) -> np.ndarray:
    """The textbook definition: zero insertion, pad (negative crops), full convolution with the taps, keep the valid
    part, every down-th sample."""
    stuffed = np.zeros(len(signal) * up)
    stuffed[::up] = signal
    padded = np.pad(stuffed, (max(lo, 0), max(hi, 0)))[max(-lo, 0):len(stuffed) + max(lo, 0) + hi]
    return np.convolve(padded, taps, mode="valid")[::down]


@pytest.mark.parametrize("up, down, padding", [(2, 1, (5, 6)), (1, 2, (0, 0)), (2, 2, (-3, 8)), (1, 1, (3, -2))])
def test_upfirdn2d_matches_the_separable_definition(up, down, padding):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 11))
    taps = rng.normal(size=7)
    rows = np.stack([reference_upfirdn_1d(r, taps, up, down, *padding) for r in image])
    expected = 3.0 * np.stack([reference_upfirdn_1d(c, taps, up, down, *padding) for c in rows.T]).T
    result = upfirdn2d(torch.tensor(image)[None, None], torch.tensor(taps), up, down, padding, gain=3.0)
    np.testing.assert_allclose(result[0, 0].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_gaussian_blur_hand_value():
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1.0
    y = gaussian_blur(x, 0.5)  # taps exp(-2 k^2), k = -2..2 (radius 3 sigma, rounded)
    taps = np.exp(-2.0 * np.arange(-2, 3) ** 2)
    taps /= taps.sum()
    np.testing.assert_allclose(y[0, 0, 3, 1:6].numpy(), taps * taps[2], rtol=1e-5)
    assert float(y.sum()) == pytest.approx(1.0)


def tiny_generator(**overrides) -> StyleGAN3Generator:
    torch.manual_seed(0)
    cfg = StyleGAN3Config(**{**dict(resolution=32, img_channels=3, z_dim=16, w_dim=16, channel_base=512,
                                    channel_max=16, num_layers=6), **overrides})
    return StyleGAN3Generator(cfg).eval()


def eq_t_psnr(generator: StyleGAN3Generator, ws: torch.Tensor, shift: int) -> float:
    """EQ-T (paper Eq. 12) for an integer shift of ``shift`` pixels along x: translate the input features, compare
    with the translated image over the pixels both cover. The peak is the images' own standard deviation rather
    than the paper's range 2, since an untrained generator's output is small."""
    with torch.no_grad():
        generator.input.transform.copy_(torch.eye(3))
        reference = generator.synthesize(ws)
        transform = torch.eye(3)
        transform[0, 2] = -shift / generator.img_resolution
        generator.input.transform.copy_(transform)
        shifted = generator.synthesize(ws)
        generator.input.transform.copy_(torch.eye(3))
    mse = (shifted[..., shift:] - reference[..., :-shift]).square().mean()
    return float(10 * torch.log10(reference.var() / mse))


def test_translation_equivariance_eq_t():
    generator = tiny_generator()
    ws = generator.map(torch.randn(4, 16))
    psnr = [eq_t_psnr(generator, ws, s) for s in (1, 3)]  # measured: about 82 and 79 dB
    assert min(psnr) > 60
    # the same check catches aliasing: without anti-aliasing filters, or without the margins, equivariance breaks
    assert eq_t_psnr(tiny_generator(filter_size=1), ws, 1) < 20
    assert eq_t_psnr(tiny_generator(margin_size=0), ws, 3) < 25


def test_generator_interface_and_magnitude_averages():
    generator = tiny_generator(resolution=16, num_layers=4)
    z = torch.randn(2, 16)
    assert generator(z).shape == (2, 3, 16, 16) and generator.num_ws == 6
    assert generator.seeded_noise([1, 2]) == []  # no noise inputs: the latent determines the image
    torch.testing.assert_close(generator(z, noise_mode="random"), generator(z, noise_mode="const"))
    radii = generator.input.freqs.norm(dim=1)
    assert float(radii.max()) <= generator.levels[0].cutoff  # Fourier frequencies inside the disc of radius f_c
    emas = [layer.magnitude_ema.clone() for layer in generator.layers]
    generator.synthesize(generator.map(z))
    assert all(torch.equal(a, layer.magnitude_ema) for a, layer in zip(emas, generator.layers))
    generator.synthesize(generator.map(z), update_emas=True)
    assert all(not torch.equal(a, layer.magnitude_ema) for a, layer in zip(emas, generator.layers))
    with pytest.raises(ValueError, match="num_critical"):
        StyleGAN3Generator(StyleGAN3Config(resolution=16, num_layers=2, num_critical=2))
