"""Adaptive discriminator augmentation (ADA), after Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data".

Every image shown to the discriminator, real or generated, passes through the same differentiable pipeline (the
paper's "bgc": blit, general geometric and colour transforms). Each transform is applied to each image
independently with probability ``p``; ``p`` is tuned during training from the overfitting heuristic
r_t = E[sign(D(real))] (paper Eq. 1 and Sec. 3): raised when r_t is above the target (0.6), lowered when below.

The geometric transforms are composed into one affine matrix per image and applied with a single bilinear
``grid_sample`` with reflection padding (the paper additionally upsamples 2x with a wavelet filter to reduce
aliasing; we skip that, as integer transforms are exact here and the rest is mild at the p values ADA reaches).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AugmentConfig:
    """Strengths and ranges of the "bgc" pipeline (ADA Appendix B); a multiplier of 0 disables a transform."""

    xflip: float = 1.0
    rotate90: float = 1.0
    xint: float = 1.0
    xint_max: float = 0.125
    scale: float = 1.0
    scale_std: float = 0.2
    rotate: float = 1.0
    rotate_max: float = 1.0
    aniso: float = 1.0
    aniso_std: float = 0.2
    xfrac: float = 1.0
    xfrac_std: float = 0.125
    brightness: float = 1.0
    brightness_std: float = 0.2
    contrast: float = 1.0
    contrast_std: float = 0.5
    lumaflip: float = 1.0
    hue: float = 1.0
    hue_max: float = 1.0
    saturation: float = 1.0
    saturation_std: float = 1.0


def ada_p_update(p: torch.Tensor | float, rt: torch.Tensor | float, target: float,
                 num_images: torch.Tensor | int, ada_kimg: float) -> torch.Tensor:
    """ADA Sec. 3: p <- clip(p + sign(r_t - target) * num_images / (ada_kimg * 1000), 0, 1), as a tensor on the
    device of ``p`` (no host sync).

    ``num_images`` is the number of real images seen since the last update, so p can move from 0 to 1 within
    ``ada_kimg`` thousand images.
    """
    p = torch.as_tensor(p, dtype=torch.float32)
    step = torch.sign(torch.as_tensor(rt, device=p.device) - target) * num_images / (ada_kimg * 1000.0)
    return (p + step).clamp(0.0, 1.0)


def _apply_with_probability(values: torch.Tensor, identity: float, probability: float) -> torch.Tensor:
    """Keep each per-image value with ``probability``, replace it by the identity value otherwise."""
    keep = torch.rand(values.shape[0], device=values.device) < probability
    return torch.where(keep, values, torch.full_like(values, identity))


def _rotation(theta: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1),
                        torch.stack([zero, zero, one], -1)], -2)


def _scaling(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    zero, one = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1),
                        torch.stack([zero, zero, one], -1)], -2)


def _translation(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    zero, one = torch.zeros_like(tx), torch.ones_like(tx)
    return torch.stack([torch.stack([one, zero, tx], -1), torch.stack([zero, one, ty], -1),
                        torch.stack([zero, zero, one], -1)], -2)


class AdaptiveAugment(nn.Module):
    """Differentiable "bgc" augmentation with a shared probability ``p`` (a buffer, saved in checkpoints)."""

    def __init__(self, cfg: AugmentConfig | None = None, rgb: bool = True):
        super().__init__()
        self.cfg = cfg or AugmentConfig()
        self.rgb = rgb
        self.register_buffer("p", torch.zeros([]))
        self.p_host = 0.0  # host copy of p, refreshed by set_p: forward needs no device sync

    def set_p(self, p: torch.Tensor | float) -> None:
        """Set p (the buffer and its host copy; one device sync)."""
        self.p.copy_(torch.as_tensor(p))
        self.p_host = float(self.p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.p_host
        if p <= 0.0:
            return images
        images = self._geometric(images, p)
        return self._colour(images, p)

    def _geometric(self, images: torch.Tensor, p: float) -> torch.Tensor:
        """Compose the ADA geometric transforms into one output->input matrix per image, then resample once."""
        cfg, n, dev = self.cfg, images.shape[0], images.device
        size = images.shape[-1]
        m = torch.eye(3, device=dev).repeat(n, 1, 1)
        flip = _apply_with_probability(1.0 - 2.0 * torch.randint(0, 2, [n], device=dev).float(), 1.0,
                                       p * cfg.xflip)
        m = m @ _scaling(flip, torch.ones_like(flip))
        quarter = _apply_with_probability(torch.randint(0, 4, [n], device=dev).float(), 0.0, p * cfg.rotate90)
        m = m @ _rotation(quarter * (math.pi / 2))
        shift = torch.round((torch.rand(2, n, device=dev) * 2 - 1) * cfg.xint_max * size) * (2.0 / size)
        shift = torch.stack([_apply_with_probability(s, 0.0, p * cfg.xint) for s in shift])
        m = m @ _translation(shift[0], shift[1])
        iso = _apply_with_probability(torch.exp2(torch.randn(n, device=dev) * cfg.scale_std), 1.0, p * cfg.scale)
        m = m @ _scaling(iso, iso)
        p_rot = 1.0 - math.sqrt(max(1.0 - p * cfg.rotate, 0.0))  # pre + post rotation: any rotation with prob p
        pre = _apply_with_probability((torch.rand(n, device=dev) * 2 - 1) * math.pi * cfg.rotate_max, 0.0, p_rot)
        m = m @ _rotation(pre)
        aniso = _apply_with_probability(torch.exp2(torch.randn(n, device=dev) * cfg.aniso_std), 1.0, p * cfg.aniso)
        m = m @ _scaling(aniso, 1.0 / aniso)
        post = _apply_with_probability((torch.rand(n, device=dev) * 2 - 1) * math.pi * cfg.rotate_max, 0.0, p_rot)
        m = m @ _rotation(post)
        frac = torch.randn(2, n, device=dev) * cfg.xfrac_std * 2.0
        frac = torch.stack([_apply_with_probability(f, 0.0, p * cfg.xfrac) for f in frac])
        m = m @ _translation(frac[0], frac[1])
        grid = F.affine_grid(m[:, :2].to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, images: torch.Tensor, p: float) -> torch.Tensor:
        """ADA colour transforms as one affine colour matrix per image (RGB) or per-channel gain/offset (other)."""
        cfg, n, dev = self.cfg, images.shape[0], images.device
        brightness = _apply_with_probability(torch.randn(n, device=dev) * cfg.brightness_std, 0.0,
                                             p * cfg.brightness)
        contrast = _apply_with_probability(torch.exp2(torch.randn(n, device=dev) * cfg.contrast_std), 1.0,
                                           p * cfg.contrast)
        lumaflip = _apply_with_probability(torch.randint(0, 2, [n], device=dev).float(), 0.0, p * cfg.lumaflip)
        if not self.rgb:
            gain = contrast * (1.0 - 2.0 * lumaflip)  # luma flip of a grey image is x -> -x
            return images * gain[:, None, None, None].to(images.dtype) + brightness[:, None, None, None].to(
                images.dtype)
        luma = torch.full([3], 1.0 / math.sqrt(3.0), device=dev)
        outer = torch.outer(luma, luma)
        eye = torch.eye(3, device=dev)
        c = (eye - 2.0 * outer * lumaflip[:, None, None]) * contrast[:, None, None]  # reflect about luma axis
        hue = _apply_with_probability((torch.rand(n, device=dev) * 2 - 1) * math.pi * cfg.hue_max, 0.0, p * cfg.hue)
        cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], device=dev) / math.sqrt(3.0)
        rotation = (eye * torch.cos(hue)[:, None, None] + cross * torch.sin(hue)[:, None, None]
                    + outer * (1.0 - torch.cos(hue))[:, None, None])  # Rodrigues: rotate about the luma axis
        saturation = _apply_with_probability(torch.exp2(torch.randn(n, device=dev) * cfg.saturation_std), 1.0,
                                             p * cfg.saturation)
        desaturate = outer + (eye - outer) * saturation[:, None, None]
        c = desaturate @ rotation @ c
        out = torch.einsum("nij,njhw->nihw", c.to(images.dtype), images)
        return out + brightness[:, None, None, None].to(images.dtype)
