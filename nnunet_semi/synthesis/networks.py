"""StyleGAN2-style generator and discriminator, written for this package.

Follows Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (StyleGAN2): a mapping network
z -> w, a synthesis network that starts from a learned constant and uses weight-modulated / demodulated 3x3
convolutions with per-pixel noise inputs and skip ("output skip") RGB outputs; a residual discriminator with a
minibatch standard deviation layer. Simplifications, all standard in re-implementations:

* upsampling is bilinear (x2, equal to the paper's [1,3,3,1] FIR filter on a zero-stuffed image, edges clamped),
  downsampling in the discriminator is a [1,3,3,1] blur with stride 2 followed by the convolution at the lower
  resolution (cheaper than the paper's blur + strided convolution);
* modulation scales the input activations and demodulation scales the output activations of an ordinary
  convolution, which is mathematically identical to modulating the weights (paper Sec. 2.2) and fast on CPUs.

All layers use the equalised learning rate of Karras et al. 2018 (weights drawn from N(0, 1), scaled at run time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.2) with the sqrt(2) gain that keeps activations at unit variance."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


def upsample2d(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def downsample2d(x: torch.Tensor) -> torch.Tensor:
    """Anti-aliased x0.5: separable [1,3,3,1] blur, stride 2 (StyleGAN2 Sec. 2 uses this filter everywhere)."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = torch.outer(taps, taps) / 64.0
    channels = x.shape[1]
    kernel = kernel.expand(channels, 1, 4, 4)
    return F.conv2d(x, kernel, stride=2, padding=1, groups=channels)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // resolution, channel_max)


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate; ``lr_multiplier`` slows the mapping network down."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_multiplier: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return lrelu(x) if self.activation else x


class EqualConv2d(nn.Module):
    """Discriminator convolution with equalised learning rate, optional blur-downsampling before it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation = activation
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = downsample2d(x)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.weight.shape[-1] // 2)
        return lrelu(x) if self.activation else x


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by styles from w, optionally demodulated (StyleGAN2 Sec. 2.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, demodulate: bool = True,
                 up: bool = False, padding: int | None = None):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.demodulate = demodulate
        self.up = up
        self.padding = kernel_size // 2 if padding is None else padding

    def forward(self, x: torch.Tensor, w: torch.Tensor, input_gain: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, in, H, W], w [N, w_dim]; ``input_gain`` (a scalar) scales x after demodulation (StyleGAN3)."""
        styles = self.affine(w)
        weight = self.weight * self.weight_gain
        x = x * styles[:, :, None, None]  # StyleGAN2 Eq. 1: w'_ijk = s_i * w_ijk, applied to the activations
        if input_gain is not None:
            x = x * input_gain
        if self.up:
            x = upsample2d(x)
        x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # StyleGAN2 Eq. 3: w''_ijk = w'_ijk / sqrt(sum_{i,k} w'_ijk^2 + eps), applied to the outputs
            sigma_inv = torch.rsqrt(styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8)
            x = x * sigma_inv[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution, per-pixel noise input with a learned strength, bias and leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.resolution = resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, noise: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``noise`` [N, 1, res, res], when given, replaces the noise of ``noise_mode``."""
        x = self.conv(x, w)
        if noise is not None:
            x = x + noise.to(x.dtype) * self.noise_strength
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
        return lrelu(x + self.bias[None, :, None, None])


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (constant or 2x upsampled input), two layers, RGB skip output."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int):
        super().__init__()
        self.is_first = resolution == 4
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.layers = nn.ModuleList([SynthesisLayer(out_channels, out_channels, w_dim, resolution)])
        else:
            self.layers = nn.ModuleList([SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True),
                                         SynthesisLayer(out_channels, out_channels, w_dim, resolution)])
        self.to_rgb = ModulatedConv2d(out_channels, img_channels, 1, w_dim, demodulate=False)
        self.rgb_bias = nn.Parameter(torch.zeros(img_channels))

    @property
    def num_ws(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str,
                noise: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_first:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode, None if noise is None else noise[i])
        rgb = self.to_rgb(x, ws[:, -1]) + self.rgb_bias[None, :, None, None]
        img = rgb if img is None else upsample2d(img) + rgb  # StyleGAN2 Fig. 7, "output skips"
        return x, img


@dataclass
class GeneratorConfig:
    resolution: int = 64
    img_channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2  # StyleGAN2-ADA's setting for small data sets ("auto" config); the paper uses 8
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 16384
    channel_max: int = 512
    w_avg_beta: float = 0.995


class MappingNetwork(nn.Module):
    """z -> w: normalise z to unit second moment, then an MLP (StyleGAN Sec. 2); tracks the mean w for truncation."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.ModuleList([EqualLinear(a, b, lr_multiplier=cfg.mapping_lr_multiplier, activation=True)
                                     for a, b in zip(dims[:-1], dims[1:])])
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))
        self.w_avg_beta = cfg.w_avg_beta

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            x = self.w_avg.to(x.dtype).lerp(x, truncation_psi)  # truncation trick, StyleGAN Sec. 3.1
        return x


class StyleGenerator(nn.Module):
    """What StyleGAN2 and StyleGAN3 generators share: the mapping network and ``G(z) = synthesize(map(z))``.

    Subclasses set ``num_ws`` and implement ``synthesize(ws, noise_mode, noise, update_emas)`` and ``seeded_noise``.
    """

    num_ws: int

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        check_resolution(cfg.resolution)
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.img_resolution = cfg.resolution
        self.img_channels = cfg.img_channels
        self.mapping = MappingNetwork(cfg)

    def map(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] -> ws [N, num_ws, w_dim] (the same w broadcast to every layer)."""
        w = self.mapping(z, truncation_psi, update_w_avg)
        return w[:, None].expand(-1, self.num_ws, -1)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random",
                noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.synthesize(self.map(z, truncation_psi), noise_mode, noise)


class Generator(StyleGenerator):
    """StyleGAN2 generator: ``G(z) -> images`` of shape [N, img_channels, resolution, resolution], about [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg)
        blocks = []
        in_channels = 0
        for log2_res in range(2, int(math.log2(cfg.resolution)) + 1):
            res = 2 ** log2_res
            out_channels = channels_at(res, cfg.channel_base, cfg.channel_max)
            blocks.append(SynthesisBlock(in_channels, out_channels, cfg.w_dim, res, cfg.img_channels))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = sum(block.num_ws for block in self.blocks)

    def seeded_noise(self, seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Noise inputs of every layer, image i drawn from its own seed: reproducible whatever the batch."""
        resolutions = [layer.resolution for block in self.blocks for layer in block.layers]
        per_image = []
        for seed in seeds:
            rng = torch.Generator().manual_seed(int(seed))
            per_image.append([torch.randn(1, 1, r, r, generator=rng) for r in resolutions])
        return [torch.cat(layer).to(device) for layer in zip(*per_image)]

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "random", noise: list[torch.Tensor] | None = None,
                   update_emas: bool = False) -> torch.Tensor:
        """ws -> images; ``noise`` (one tensor per layer, see :meth:`seeded_noise`) overrides ``noise_mode``.
        StyleGAN2 has no moving averages in the synthesis network; ``update_emas`` is accepted and unused."""
        x = img = None
        start = 0
        for block in self.blocks:
            block_noise = None if noise is None else noise[start:start + block.num_ws]
            x, img = block(x, img, ws[:, start:start + block.num_ws], noise_mode, block_noise)
            start += block.num_ws
        return img


@dataclass
class DiscriminatorConfig:
    resolution: int = 64
    img_channels: int = 3
    channel_base: int = 16384
    channel_max: int = 512
    mbstd_group_size: int = 4


class DiscriminatorBlock(nn.Module):
    """Residual block (StyleGAN2 Fig. 7c): two convolutions, the second one at half resolution, plus a 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) / math.sqrt(2.0)


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append the average standard deviation of features over groups of images (Karras et al. 2018, Sec. 3)."""
    n, c, h, w = x.shape
    group = max(g for g in range(1, min(group_size, n) + 1) if n % g == 0)
    y = x.float().reshape(group, n // group, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])  # [n // group]
    y = y.to(x.dtype).repeat(group)[:, None, None, None].expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: ``D(images) -> logits [N]``."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        check_resolution(cfg.resolution)
        self.cfg = cfg
        top = channels_at(cfg.resolution, cfg.channel_base, cfg.channel_max)
        self.from_rgb = EqualConv2d(cfg.img_channels, top, 1)
        blocks = []
        res = cfg.resolution
        while res > 4:
            blocks.append(DiscriminatorBlock(channels_at(res, cfg.channel_base, cfg.channel_max),
                                             channels_at(res // 2, cfg.channel_base, cfg.channel_max)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        c4 = channels_at(4, cfg.channel_base, cfg.channel_max)
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.from_rgb(images))
        x = self.conv(minibatch_stddev(x, self.cfg.mbstd_group_size))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


def check_resolution(resolution: int) -> None:
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
