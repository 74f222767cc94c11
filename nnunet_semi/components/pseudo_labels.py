"""Pseudo-labels from teacher predictions."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from scipy import ndimage
from torch import distributed as dist
from torch import nn


def largest_component_per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep, for every foreground class, only its largest connected component (full connectivity); voxels of
    dropped components become background. A class without any voxel stays empty."""
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    filtered = np.zeros_like(labels)
    for c in range(1, num_classes):
        components, count = ndimage.label(labels == c, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        filtered[components == 1 + int(np.argmax(sizes))] = c
    return filtered


def filtered_hard_pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) logits -> (B, C, *spatial) one-hot pseudo-labels: argmax, then the largest connected
    component per class and sample (2D components for 2D patches, 3D components for 3D patches)."""
    num_classes = logits.shape[1]
    hard = logits.argmax(1).cpu().numpy()
    filtered = np.stack([largest_component_per_class(sample, num_classes) for sample in hard])
    one_hot = F.one_hot(torch.from_numpy(filtered).long().to(logits.device), num_classes)
    return one_hot.movedim(-1, 1).float()


def confidence(probabilities: torch.Tensor, has_regions: bool, class_dim: int = 0) -> torch.Tensor:
    """Probabilities with classes (or regions) along ``class_dim`` -> confidence, that dimension removed: the
    winning class's probability (softmax), or for regions (sigmoid) the least certain region's max(p, 1 - p)."""
    if has_regions:
        return torch.maximum(probabilities, 1 - probabilities).amin(class_dim)
    return probabilities.amax(class_dim)


def confident_pseudo_labels(probabilities: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, *spatial) class probabilities -> hard pseudo-labels (B, 1, *spatial) (their argmax, no gradient) and
    the float mask (B, 1, *spatial) of voxels whose top probability is at least ``threshold``."""
    top, labels = probabilities.detach().max(1, keepdim=True)
    return labels, (top >= threshold).float()


def gather_from_workers(values: torch.Tensor) -> torch.Tensor:
    """(K, N) -> (K, sum of N): every DDP worker's columns concatenated in rank order (the tensor itself without
    DDP). Workers may hold different N (nnU-Net splits an odd global batch unevenly)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    world_size = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([values.shape[-1]], device=values.device))
    sizes = [int(size) for size in sizes]
    padded = F.pad(values, (0, max(sizes) - values.shape[-1]))
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[..., :size] for part, size in zip(gathered, sizes)], -1)


class RunningClassThresholds:
    """Per-class thresholds as an exponential moving average over training steps: ``momentum`` * the running value +
    (1 - ``momentum``) * the batch's, where both exist; a class first seen in a batch starts at the batch's value,
    and a class absent from a batch keeps its running value. Class-balanced self-training (Zou et al., ECCV 2018)
    takes each class's threshold over the whole unlabeled set; a running estimate over the last ~1 / (1 -
    ``momentum``) steps approximates that without a pass over the set, so that a batch where the teacher assigns a
    class to a few unsure voxels (a false positive on a slice without that class) does not keep the more confident
    half of them as it would with the batch's own threshold. It is an average of batch quantiles, each batch
    counting alike whatever its number of voxels of the class, and it lags a teacher that grows surer, so it keeps
    somewhat more than the batch's share late in training. Under DDP every worker updates from the same global
    batch thresholds, so the estimates stay identical without communication."""

    def __init__(self, momentum: float):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.values: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> torch.Tensor:
        """(C,) thresholds of one batch (NaN: no voxel assigned that class) -> the (C,) running thresholds after it
        (NaN: a class not seen yet)."""
        if self.values is None:
            self.values = batch.clone()
            return self.values
        blended = self.values.lerp(batch, 1 - self.momentum)
        self.values = torch.where(batch.isnan(), self.values, torch.where(self.values.isnan(), batch, blended))
        return self.values

    def state_dict(self) -> dict:
        return {"values": self.values}

    def load_state_dict(self, state: dict) -> None:
        self.values = state["values"]


def class_quantile_thresholds(top: torch.Tensor, labels: torch.Tensor, num_classes: int,
                              keep_fraction: float) -> torch.Tensor:
    """Each voxel's top probability and argmax class (same shape) -> (num_classes,) thresholds: per class, the
    confidence of its ``keep_fraction`` most confident voxels' least confident one, over the global batch (under DDP
    every worker's voxels); NaN for a class no voxel is assigned."""
    all_top, all_labels = gather_from_workers(torch.stack((top.flatten(), labels.flatten().to(top.dtype))))
    thresholds = torch.full((num_classes,), float("nan"), dtype=top.dtype, device=top.device)
    for c in all_labels.unique():
        scores = all_top[all_labels == c]
        kept = math.ceil(keep_fraction * scores.numel())
        thresholds[c.long()] = scores.kthvalue(scores.numel() - kept + 1).values  # the kept-th largest confidence
    return thresholds


def class_balanced_pseudo_labels(probabilities: torch.Tensor, keep_fraction: float,
                                 sure_threshold: float | None = None,
                                 running: RunningClassThresholds | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, *spatial) class probabilities -> hard pseudo-labels (B, 1, *spatial) (their argmax, no gradient) and
    the float mask (B, 1, *spatial) that keeps, of the voxels assigned each class, the ``keep_fraction`` most
    confident (ties at the threshold kept). Class-balanced self-training (Zou et al., ECCV 2018): one threshold per
    class, the confidence of its top ``keep_fraction`` quantile, so that every class keeps the same share of its
    voxels and a majority class the teacher is sure of does not crowd out the others, as one fixed threshold lets
    it. Thresholds are taken over the global batch (under DDP over every worker's voxels, so ``-num_gpus N`` keeps
    what one GPU would), or with ``running`` as its running estimate updated by this batch
    (:class:`RunningClassThresholds`). ``sure_threshold`` (None: no cap) caps every class's threshold, so that a
    voxel at least that confident is kept whatever its class's share: without it the less confident half of the
    background is dropped too, and nothing but the labeled loss stops the student from growing the foreground into
    it."""
    top, labels = probabilities.detach().max(1, keepdim=True)
    thresholds = class_quantile_thresholds(top, labels, probabilities.shape[1], keep_fraction)
    if running is not None:
        thresholds = running.update(thresholds)
    if sure_threshold is not None:
        thresholds = thresholds.clamp_max(sure_threshold)
    return labels, (top >= thresholds[labels]).to(top.dtype)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_i mask_i * CE(logits_i, labels_i) over every voxel i of the batch (FixMatch / UniMatch: unconfident
    voxels count as 0, so the loss grows with the confident share instead of jumping when few voxels pass).
    logits (B, C, *spatial), labels and mask (B, 1, *spatial)."""
    return (F.cross_entropy(logits.float(), labels[:, 0].long(), reduction="none") * mask[:, 0]).mean()


class PseudoLabelDiceCELoss(nn.Module):
    """The pseudo-label loss of FixMatch-style training with nnU-Net's terms: nnU-Net's soft Dice (foreground
    classes, ``batch_dice`` as planned) over the confident voxels plus :func:`masked_cross_entropy`."""

    def __init__(self, batch_dice: bool, ddp: bool):
        super().__init__()
        self.dice = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, batch_dice, do_bg=False, smooth=1e-5, ddp=ddp)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, confident: torch.Tensor) -> torch.Tensor:
        """logits (B, C, *spatial); labels and confident (B, 1, *spatial)."""
        return self.dice(logits, labels, loss_mask=confident) + masked_cross_entropy(logits, labels, confident)
