"""Filters for alias-free signal processing (StyleGAN3) written for this package: Kaiser-windowed sinc low-pass design,
separable up-sample / filter / down-sample (upfirdn), and the Gaussian blur of StyleGAN3's discriminator inputs."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def kaiser_beta(numtaps: int, width: float, fs: float) -> float:
    """Kaiser's window parameter for a transition band of ``width`` (Kaiser 1974; Oppenheim & Schafer Eq. 7.62-7.63):
    attenuation A = 2.285 (numtaps - 1) pi (width / Nyquist) + 7.95 dB; beta = 0.1102 (A - 8.7) for A > 50,
    0.5842 (A - 21)^0.4 + 0.07886 (A - 21) for 21 <= A <= 50, else 0."""
    attenuation = 2.285 * (numtaps - 1) * math.pi * (width / (fs / 2)) + 7.95
    if attenuation > 50:
        return 0.1102 * (attenuation - 8.7)
    if attenuation >= 21:
        return 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    return 0.0


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass filter [numtaps] with unit DC gain (paper Sec. 3.2 uses these throughout).

    h[n] = 2 f_c / fs * sinc(2 f_c / fs * (n - (numtaps - 1) / 2)) * kaiser(n), normalised to sum 1. One tap is
    the identity (no filtering).
    """
    if numtaps == 1:
        return torch.ones(1)
    m = np.arange(numtaps) - (numtaps - 1) / 2
    band = 2 * cutoff / fs
    h = band * np.sinc(band * m) * np.kaiser(numtaps, kaiser_beta(numtaps, width, fs))
    return torch.tensor(h / h.sum(), dtype=torch.float32)


def upfirdn2d(x: torch.Tensor, taps: torch.Tensor, up: int = 1, down: int = 1,
              padding: tuple[int, int] = (0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), filter with the separable ``taps`` along both axes, keep
    every ``down``-th sample. x [N, C, H, W] -> [N, C, H', W']; ``gain`` multiplies the 2-D filter.

    Channels are folded into the batch so that both 1-D passes are single-channel convolutions (several times
    faster on CPUs than depthwise ones), and the second pass computes only the kept samples (stride ``down``).
    """
    n, c, h, w = x.shape
    if up > 1:  # sample k of the input lands at k * up, zeros in between
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    lo, hi = padding
    x = F.pad(x, [max(lo, 0), max(hi, 0), max(lo, 0), max(hi, 0)])
    x = x[:, :, max(-lo, 0):x.shape[2] - max(-hi, 0), max(-lo, 0):x.shape[3] - max(-hi, 0)]
    if taps.numel() == 1:  # the identity filter (lowpass_filter with one tap): no device read of the tap
        x = x[:, :, ::down, ::down]
        return x * gain if gain != 1.0 else x
    f = (taps * math.sqrt(gain)).flip(0).to(x.dtype)
    size = x.shape[2:]
    x = x.reshape(n * c, 1, *size)
    x = F.conv2d(x, f.view(1, 1, 1, -1), stride=(1, down))
    x = F.conv2d(x, f.view(1, 1, -1, 1), stride=(down, 1))
    return x.reshape(n, c, *x.shape[2:])


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (standard deviation ``sigma`` pixels, taps to 3 sigma, zero padded, same size) of
    [N, C, H, W] images, used on D's inputs early in StyleGAN3 training (paper Appendix F)."""
    radius = max(int(round(sigma * 3)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    taps = torch.exp(-x.square() / (2 * sigma ** 2))
    return upfirdn2d(images, taps / taps.sum(), padding=(radius, radius))
