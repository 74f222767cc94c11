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


def resampling_matrix(taps: torch.Tensor, size: int, up: int, down: int, padding: tuple[int, int],
                      gain: float) -> torch.Tensor:
    """The 1-D upfirdn as a matrix [size, size']: zero insertion (sample k at k * up), padding ``padding`` (negative
    crops), correlation with the flipped ``taps`` times ``gain``, every ``down``-th output kept.

    Entry [k, m] = gain * taps[T - 1 - t] with t = k * up + lo - m * down when 0 <= t < T, else 0.
    """
    lo, hi = padding
    num_taps = taps.numel()
    out = (size * up + lo + hi - num_taps) // down + 1
    if out < 1:
        raise ValueError(f"upfirdn: {size} samples (up {up}, padding {padding}) are fewer than the {num_taps} taps")
    k = torch.arange(size, device=taps.device)[:, None]
    m = torch.arange(out, device=taps.device)[None, :]
    t = k * up + lo - m * down
    valid = (t >= 0) & (t < num_taps)
    flipped = taps.flip(0) * gain
    return torch.where(valid, flipped[t.clamp(0, num_taps - 1)], torch.zeros((), dtype=taps.dtype, device=taps.device))


def upfirdn2d(x: torch.Tensor, taps: torch.Tensor, up: int = 1, down: int = 1,
              padding: tuple[int, int] = (0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), filter with the separable ``taps`` along both axes, keep
    every ``down``-th sample. x [N, C, H, W] -> [N, C, H', W']; ``gain`` multiplies the 2-D filter.

    Each axis is one matrix product with its ``resampling_matrix`` (zero insertion, filter and stride folded in):
    dense products run near the machine's peak on CPUs and GPUs, where single-channel convolutions over the
    zero-stuffed signal ran at a few percent of it.
    """
    h, w = x.shape[-2:]
    axis_gain = math.sqrt(gain)
    rows = resampling_matrix(taps.to(x.dtype), h, up, down, padding, axis_gain)
    cols = resampling_matrix(taps.to(x.dtype), w, up, down, padding, axis_gain) if w != h else rows
    return resample(x, rows, cols)


def resample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] -> rows^T x cols [N, C, H', W'] with ``resampling_matrix`` rows [H, H'] and cols [W, W'] (built
    once by layers whose sizes are fixed, per call by :func:`upfirdn2d`)."""
    return torch.matmul(rows.T.to(x.dtype), torch.matmul(x, cols.to(x.dtype)))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (standard deviation ``sigma`` pixels, taps to 3 sigma, zero padded, same size) of
    [N, C, H, W] images, used on D's inputs early in StyleGAN3 training (paper Appendix F)."""
    radius = max(int(round(sigma * 3)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    taps = torch.exp(-x.square() / (2 * sigma ** 2))
    return upfirdn2d(images, taps / taps.sum(), padding=(radius, radius))
