"""StyleGAN3-T ("alias-free") generator, written for this package from Karras et al. 2021, "Alias-Free Generative
Adversarial Networks" (NeurIPS), configuration T (translation equivariance), the generator of SSGNet.

Every signal is treated as a band-limited continuous signal sampled on a discrete grid (paper Sec. 2):

* the input is a grid of Fourier features (Sec. 3.2) whose frequencies lie in a disc of radius f_c = 2 (the first
  cutoff), translated and rotated by an affine function of w (identity at initialisation); an extra ``transform``
  buffer translates them at will, which is how the EQ-T metric (Sec. 3, Eq. 12) is measured;
* every layer is a modulated 3x3 convolution followed by a *filtered* nonlinearity (Sec. 3.2, Fig. 4 right):
  upsample x2 with an ideal low-pass filter (Kaiser-windowed sinc at the layer's input cutoff), leaky ReLU, then
  low-pass at the output cutoff and downsample to the output sampling rate;
* cutoffs and stopbands grow geometrically from f_c = 2 to the image's Nyquist frequency over the layers; the last
  ``num_critical`` layers are critically sampled (cutoff = sampling rate / 2, no margin), the others carry a
  margin of ``margin_size`` pixels on each side (Sec. 3.2, "flexible layer specifications", Fig. 4 left);
* inputs of every layer are normalised by a moving average of their magnitude, and the output is scaled by 0.25
  (Appendix F), which replaces StyleGAN2's noise inputs and skip connections (there are none).

Deliberate differences from the released code, which we read but did not copy: the Fourier frequencies are drawn
uniformly in the disc, as the paper states (the code uses a heuristic radial distribution); up/down-sampling is
done with separable depthwise convolutions in PyTorch (no custom CUDA kernel), and the filtered nonlinearity
keeps its intermediate tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semi.synthesis.filters import lowpass_filter, resample, resampling_matrix
from nnunet_semi.synthesis.networks import EqualLinear, GeneratorConfig, ModulatedConv2d, StyleGenerator

LRELU_SLOPE = 0.2


@dataclass
class StyleGAN3Config(GeneratorConfig):
    """StyleGAN3-T's configuration (paper Appendix F and Table 15, config T)."""

    channel_base: int = 32768
    num_layers: int = 14
    num_critical: int = 2
    first_cutoff: float = 2.0
    first_stopband: float = 2 ** 2.1
    last_stopband_ratio: float = 2 ** 0.3  # last stopband = Nyquist * 2^0.3
    margin_size: int = 10
    filter_size: int = 6  # taps per sampling interval of the up/down-sampling filters
    lrelu_upsampling: int = 2
    conv_kernel: int = 3
    magnitude_ema_beta: float = 0.999
    output_scale: float = 0.25
    conv_clamp: float = 256.0


@dataclass
class Level:
    """The signal after one layer: band limit (cutoff), stopband, sampling rate, filter half width, grid size."""

    cutoff: float
    stopband: float
    sampling_rate: int
    half_width: float
    size: int
    channels: int


def layer_schedule(cfg: StyleGAN3Config) -> list[Level]:
    """Levels 0..num_layers (the last one is the RGB output), paper Sec. 3.2 / Fig. 4 left.

    exponent e_i = min(i / (N - N_crit), 1); f_c,i = f_c,0 (f_c,N / f_c,0)^e_i, likewise the stopbands f_t; the
    sampling rate is the smallest power of two >= 2 f_t (at most the image size); half width = max(f_t, s/2) - f_c.
    """
    n = cfg.num_layers
    last_cutoff = cfg.resolution / 2
    exponents = np.minimum(np.arange(n + 1) / (n - cfg.num_critical), 1.0)
    cutoffs = cfg.first_cutoff * (last_cutoff / cfg.first_cutoff) ** exponents
    last_stopband = last_cutoff * cfg.last_stopband_ratio
    stopbands = cfg.first_stopband * (last_stopband / cfg.first_stopband) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, cfg.resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + 2 * cfg.margin_size
    sizes[-2:] = cfg.resolution  # the critically sampled output layers have no margin
    channels = np.rint(np.minimum(cfg.channel_base / 2 / cutoffs, cfg.channel_max))
    channels[-1] = cfg.img_channels
    return [Level(float(c), float(t), int(s), float(h), int(z), int(ch))
            for c, t, s, h, z, ch in zip(cutoffs, stopbands, sampling_rates, half_widths, sizes, channels)]


class FourierInput(nn.Module):
    """Input layer: ``channels`` Fourier features on a ``size`` x ``size`` grid at ``sampling_rate`` (Sec. 3.2).

    Feature k at position x is sin(2 pi (f_k . T x + phi_k)), with T the affine-from-w transform (rotation and
    translation, identity at initialisation) composed with ``transform``; features whose transformed frequency
    nears the Nyquist rate fade out. A learned 1x1 mixing follows.
    """

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: int, bandwidth: float):
        super().__init__()
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        self.affine = EqualLinear(w_dim, 4)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        radius = bandwidth * torch.rand(channels).sqrt()  # uniform in the disc of radius f_c (Appendix F)
        angle = 2 * math.pi * torch.rand(channels)
        self.register_buffer("freqs", torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1))
        self.register_buffer("phases", torch.rand(channels) - 0.5)
        self.register_buffer("transform", torch.eye(3))
        half_extent = 0.5 * size / sampling_rate  # the grid covers the image plus its margin
        theta = torch.tensor([[[half_extent, 0.0, 0.0], [0.0, half_extent, 0.0]]])
        self.register_buffer("grid", F.affine_grid(theta, [1, 1, size, size], align_corners=False),
                             persistent=False)  # [1, H, W, 2] sample positions, fixed
        self.weight = nn.Parameter(torch.randn(channels, channels))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, w_dim] -> features [N, channels, size, size]."""
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)  # (cos, sin, tx, ty) with a unit rotation
        n = w.shape[0]
        eye = torch.eye(3, device=w.device, dtype=t.dtype).repeat(n, 1, 1)
        rotation, translation = eye.clone(), eye.clone()
        rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        translation[:, 0, 2], translation[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = rotation @ translation @ self.transform
        phases = self.phases + (self.freqs @ transforms[:, :2, 2:]).squeeze(2)  # [N, C]
        freqs = self.freqs @ transforms[:, :2, :2]  # [N, C, 2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        x = torch.einsum("ahwd,ncd->nhwc", self.grid.to(t.dtype), freqs) + phases[:, None, None, :]
        x = torch.sin(2 * math.pi * x) * amplitudes[:, None, None, :]
        x = x @ (self.weight / math.sqrt(self.weight.shape[0])).t()
        return x.permute(0, 3, 1, 2)


class AliasFreeLayer(nn.Module):
    """Modulated convolution + filtered leaky ReLU from level ``src`` to level ``dst`` (Sec. 3.2, Fig. 4 right).

    The RGB layer (``is_rgb``) is a 1x1 modulated convolution without demodulation and without nonlinearity.
    """

    def __init__(self, cfg: StyleGAN3Config, src: Level, dst: Level, is_rgb: bool):
        super().__init__()
        kernel = 1 if is_rgb else cfg.conv_kernel
        self.is_rgb = is_rgb
        self.conv = ModulatedConv2d(src.channels, dst.channels, kernel, cfg.w_dim, demodulate=not is_rgb,
                                    padding=kernel - 1)
        self.bias = nn.Parameter(torch.zeros(dst.channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.magnitude_ema_beta = cfg.magnitude_ema_beta
        self.conv_clamp = cfg.conv_clamp
        temporary_rate = max(src.sampling_rate, dst.sampling_rate) * (1 if is_rgb else cfg.lrelu_upsampling)
        self.up = round(temporary_rate / src.sampling_rate)
        self.down = round(temporary_rate / dst.sampling_rate)
        up_taps = cfg.filter_size * self.up if self.up > 1 and not is_rgb else 1
        down_taps = cfg.filter_size * self.down if self.down > 1 and not is_rgb else 1
        self.register_buffer("up_filter", lowpass_filter(up_taps, src.cutoff, src.half_width * 2, temporary_rate))
        self.register_buffer("down_filter", lowpass_filter(down_taps, dst.cutoff, dst.half_width * 2,
                                                           temporary_rate))
        # pad so that the output has dst.size samples; lo/hi split puts samples at pixel centres (symmetric grid)
        total = ((dst.size - 1) * self.down + 1 - (src.size + kernel - 1) * self.up + up_taps + down_taps - 2)
        lo = (total + self.up) // 2
        self.padding = (lo, total - lo)
        # the layer's sizes are fixed: its two resampling matrices are built once (not saved: derived from the above)
        up_matrix = resampling_matrix(self.up_filter, src.size + kernel - 1, self.up, 1, self.padding, self.up)
        self.register_buffer("up_matrix", up_matrix, persistent=False)
        self.register_buffer("down_matrix", resampling_matrix(self.down_filter, up_matrix.shape[1], 1, self.down,
                                                              (0, 0), 1.0), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        """x [N, C_src, S_src, S_src], w [N, w_dim] -> [N, C_dst, S_dst, S_dst]."""
        if update_emas:
            magnitude = x.detach().float().square().mean()
            self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        x = self.conv(x, w, input_gain=self.magnitude_ema.rsqrt().to(x.dtype))
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        x = resample(x, self.up_matrix, self.up_matrix)  # upfirdn2d(up_filter, up, padding, gain up^2)
        if not self.is_rgb:
            x = F.leaky_relu(x, LRELU_SLOPE) * math.sqrt(2.0)
        x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return resample(x, self.down_matrix, self.down_matrix)  # upfirdn2d(down_filter, down)


class StyleGAN3Generator(StyleGenerator):
    """StyleGAN3-T: ``G(z) -> images`` [N, img_channels, resolution, resolution], about [-1, 1]; no noise inputs.

    ws[:, 0] drives the Fourier input, ws[:, i + 1] layer i (num_layers + 1 layers, the last one RGB).
    """

    def __init__(self, cfg: StyleGAN3Config):
        super().__init__(cfg)
        if cfg.num_critical < 0 or cfg.num_layers <= cfg.num_critical:
            raise ValueError(f"num_layers ({cfg.num_layers}) must exceed num_critical ({cfg.num_critical}) >= 0")
        self.levels = layer_schedule(cfg)
        first = self.levels[0]
        self.input = FourierInput(cfg.w_dim, first.channels, first.size, first.sampling_rate, first.cutoff)
        self.layers = nn.ModuleList(
            AliasFreeLayer(cfg, self.levels[max(i - 1, 0)], self.levels[i], is_rgb=i == cfg.num_layers)
            for i in range(cfg.num_layers + 1))
        self.num_ws = cfg.num_layers + 2

    def seeded_noise(self, seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """StyleGAN3 has no noise inputs: an image is determined by its latent alone."""
        return []

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "random", noise: list[torch.Tensor] | None = None,
                   update_emas: bool = False) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> images; ``noise_mode`` / ``noise`` are accepted for interface compatibility and
        have no effect; ``update_emas`` (training) updates every layer's input-magnitude average."""
        x = self.input(ws[:, 0])
        for layer, w in zip(self.layers, ws[:, 1:].unbind(1)):
            x = layer(x, w, update_emas)
        return x * self.cfg.output_scale
