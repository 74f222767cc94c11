"""Box mixing: copy-paste with soft edges (bidirectional copy-paste, Bai et al. CVPR 2023; soft edges from SRA-Seg)
and CutMix boxes (Yun et al. ICCV 2019, as UniMatch draws them)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def box_hole_mask(batch_size: int, spatial_shape: tuple[int, ...], hole_fraction: float = 2 / 3,
                  device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, *spatial) float mask: 0 inside a box covering ``hole_fraction`` of every spatial dimension at a
    uniformly random position (one per sample), 1 outside."""
    mask = torch.ones((batch_size, 1, *spatial_shape), device=device)
    for b in range(batch_size):
        box = []
        for size in spatial_shape:
            hole = int(size * hole_fraction)
            start = int(torch.randint(0, size - hole + 1, (1,), generator=generator))
            box.append(slice(start, start + hole))
        mask[(b, 0, *box)] = 0
    return mask


def soften_edges(mask: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """Blur a (B, 1, *spatial) mask with a ``kernel_size``^d average pool (SRA-Seg's soft edge blending).

    ``count_include_pad=False`` averages only voxels inside the patch, so the patch border is not darkened.
    """
    pool = _AVG_POOL[mask.ndim - 2]
    return pool(mask, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=False)


def soft_box_mask(batch_size: int, spatial_shape: tuple[int, ...], hole_fraction: float = 2 / 3,
                  kernel_size: int = 3, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """alpha in [0, 1]: ~0 inside a random box hole, 1 outside, soft at the hole's edge."""
    return soften_edges(box_hole_mask(batch_size, spatial_shape, hole_fraction, device, generator), kernel_size)


def blend(outside: torch.Tensor, inside: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha * outside + (1 - alpha) * inside, for images and (soft) label maps alike."""
    return alpha * outside + (1 - alpha) * inside


def next_sample(batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) index of each sample's mixing partner: the next sample of the batch (the last one's is the first)."""
    return torch.roll(torch.arange(batch_size, device=device), -1)


def paste(x: torch.Tensor, box: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """CutMix: ``x[partner]`` inside ``box`` (B, 1, *spatial; 1 inside), ``x`` elsewhere. x (B, C, *spatial)."""
    return torch.where(box.bool(), x[partner], x)


def cutmix_box_mask(batch_size: int, spatial_shape: tuple[int, ...], probability: float = 0.5,
                    volume_range: tuple[float, float] = (0.02, 0.4), aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
                    device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, *spatial) float mask: 1 inside one CutMix box per sample (drawn with ``probability``), 0 elsewhere.

    The box covers a uniform fraction of ``volume_range`` of the patch; its side lengths deviate from the cube's by
    factors exp(a_i), with log-aspects a_i uniform in +-log(aspect_range) / 2 and centred to sum 0 (in 2D: the
    ratio of its sides is in ``aspect_range``, as UniMatch's boxes); sides are clipped to the patch and the box is
    placed uniformly inside it.
    """
    mask = torch.zeros((batch_size, 1, *spatial_shape), device=device)
    d = len(spatial_shape)
    low, high = (math.log(a) / 2 for a in aspect_range)
    for b in range(batch_size):
        if float(torch.rand((), generator=generator)) >= probability:
            continue
        fraction = volume_range[0] + (volume_range[1] - volume_range[0]) * float(torch.rand((), generator=generator))
        log_aspects = low + (high - low) * torch.rand(d, generator=generator)
        log_aspects -= log_aspects.mean()
        cube_side = (fraction * math.prod(spatial_shape)) ** (1 / d)
        box = []
        for size, a in zip(spatial_shape, log_aspects.tolist()):
            side = min(size, max(1, round(cube_side * math.exp(a))))
            start = int(torch.randint(0, size - side + 1, (1,), generator=generator))
            box.append(slice(start, start + side))
        mask[(b, 0, *box)] = 1
    return mask
