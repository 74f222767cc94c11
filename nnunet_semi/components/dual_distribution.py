"""SemiGDA's building blocks (Huang et al., "SemiGDA: Generative Dual-Distribution Alignment for Semi-Supervised
Medical Image Segmentation", CVPR 2026): adaptive class reversion, the latent mapping model, skip adapters, the
two-branch network around a frozen VAE, and the latent and segmentation losses.

Shapes: images and logits (B, C, H, W); latents (B, L, H/f, W/f) for the VAE's downsampling factor f.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semi.components.soft_losses import soft_dice_loss
from nnunet_semi.components.vae import FrozenVAE
from nnunet_semi.core.frozen import FrozenPart


# ---------------------------------------------------------------------- adaptive class reversion (eq. 11)
def class_levels(num_classes: int) -> torch.Tensor:
    """The grey level of every class, (num_classes,): G' = 2G/K - 1 (eq. 11) with K the largest label
    (num_classes - 1), so that the levels span [-1, 1] and a binary mask maps to {-1, 1} as the paper states.
    (The released code is binary-only and maps masks to [0, 1].)"""
    if num_classes < 2:
        raise ValueError(f"class reversion needs at least 2 classes, got {num_classes}")
    return torch.linspace(-1.0, 1.0, num_classes)


def labels_to_image(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps (B, 1, H, W) (integer values) -> 3-channel images (B, 3, H, W) at the class levels (eq. 11)."""
    levels = class_levels(num_classes).to(labels.device)
    return levels[labels[:, 0].long()].unsqueeze(1).expand(-1, 3, -1, -1)


def image_to_class_logits(images: torch.Tensor, num_classes: int, sharpness: float) -> torch.Tensor:
    """The reversion of eq. 11, differentiable: decoded images (B, 3, H, W) -> class logits (B, K, H, W),
    -sharpness ((mean_rgb - G'_k) / spacing)^2, spacing = 2 / (K - 1) between neighbouring levels. Each voxel's
    argmax is the class whose level is nearest; an image exactly at a level gives that class."""
    levels = class_levels(num_classes).to(images.device, torch.float32).view(1, -1, 1, 1)
    spacing = 2.0 / (num_classes - 1)
    grey = images.float().mean(1, keepdim=True)
    return -sharpness * ((grey - levels) / spacing) ** 2


# ---------------------------------------------------------------------- modules
def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus the (1x1-projected) input."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(in_channels), in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            nn.GroupNorm(_groups(out_channels), out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1))
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.body(x)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the positions of a feature map (B, C, h, w), residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return x + attended.transpose(1, 2).reshape(b, c, h, w)


class LatentMapper(nn.Module):
    """M of eq. 2: a small residual U-Net at latent resolution (one downsampling, self-attention at the bottom)
    mapping the image latent z_v (B, L, h, w) to z~_v of the same shape."""

    def __init__(self, latent_channels: int, width: int = 64, heads: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(latent_channels, width, 3, 1, 1)
        self.encode = ResidualBlock(width, width)
        self.down = nn.Conv2d(width, 2 * width, 3, 2, 1)
        self.bottom = nn.Sequential(ResidualBlock(2 * width, 2 * width), SelfAttention2d(2 * width, heads),
                                    ResidualBlock(2 * width, 2 * width))
        self.up = nn.Conv2d(2 * width, width, 3, 1, 1)
        self.decode = ResidualBlock(2 * width, width)
        self.head = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(),
                                  nn.Conv2d(width, latent_channels, 3, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        skip = self.encode(self.stem(z))
        bottom = self.bottom(self.down(skip))
        up = self.up(F.interpolate(bottom, size=skip.shape[2:], mode="nearest"))
        return self.head(self.decode(torch.cat((up, skip), 1)))


class SkipAdapter(nn.Module):
    """One light residual block per decoder level on cat(h, skip) (eq. 7): h + conv(SiLU(conv(cat(h, skip)))).
    The last conv starts at zero, so an untrained adapter leaves the frozen decoder unchanged."""

    def __init__(self, decoder_channels: dict[int, int], skip_channels: dict[int, int]):
        super().__init__()
        self.blocks = nn.ModuleDict({str(s): self._block(c, skip_channels[s]) for s, c in decoder_channels.items()})

    @staticmethod
    def _block(channels: int, skip: int) -> nn.Sequential:
        out = nn.Conv2d(channels, channels, 3, 1, 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        return nn.Sequential(nn.Conv2d(channels + skip, channels, 3, 1, 1), nn.SiLU(), out)

    def forward(self, stride: int, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if skip.shape[2:] != h.shape[2:]:
            skip = F.interpolate(skip, size=h.shape[2:], mode="bilinear", align_corners=False)
        return h + self.blocks[str(stride)](torch.cat((h, skip.to(h.dtype)), 1))


def truncated_encoder(encoder: nn.Module, factor: int) -> tuple[nn.Module, dict[int, int]]:
    """nnU-Net's planned encoder (PlainConvEncoder or ResidualEncoder) cut after the first stage whose total
    stride reaches ``factor``, returning skips. Returns the encoder and {total stride: stage index}."""
    totals, total = [], 1
    for stride in encoder.strides:
        if len(set(stride)) != 1:
            raise ValueError(
                f"SemiGDA needs isotropic strides in the plans; the encoder has strides {encoder.strides}.")
        total *= stride[0]
        totals.append(total)
    if totals[-1] < factor:
        raise ValueError(f"The planned encoder downsamples by {totals[-1]} in total, less than the VAE's factor "
                         f"{factor}; plan a larger patch size.")
    depth = next(i for i, t in enumerate(totals) if t >= factor) + 1
    encoder.stages = encoder.stages[:depth]
    encoder.strides, encoder.output_channels = encoder.strides[:depth], encoder.output_channels[:depth]
    encoder.return_skips = True
    return encoder, {t: i for i, t in enumerate(totals[:depth])}


class SemiGDAOutputs(NamedTuple):
    """What the network returns in training mode."""
    mapped_latent: torch.Tensor   # z~_v (B, L, h, w), eq. 2
    mask_latent: torch.Tensor     # z_r (B, L, h, w), eq. 3
    image_logits: torch.Tensor    # class logits of y_v (B, K, H, W)
    mask_logits: torch.Tensor     # class logits of y_r (B, K, H, W)


class SemiGDANetwork(nn.Module):
    """The two branches around one frozen VAE.

    * Image branch: z_v = E(x) (frozen), z~_v = M(z_v), y_v = D(z~_v) with the Image Skip Adapter fed by E's
      multi-scale features.
    * Mask branch: z_r = E_r(x) (nnU-Net's planned encoder, truncated at the VAE's factor, plus a 1x1 conv to the
      latent channels), y_r = D(z_r) with the Mask Skip Adapter fed by E_r's stage outputs.
    * Both decoded images are reverted to class logits (eq. 11). Training mode returns :class:`SemiGDAOutputs`;
      eval mode returns log((softmax(y_v) + softmax(y_r)) / 2), the paper's average of the two branches, as logits
      for nnU-Net's predictor.

    Input: nnU-Net's z-scored patches (B, C, H, W) with C = 1 (repeated to RGB) or 3; they reach the VAE as
    clip(x / input_std_range, -1, 1) (``input_std_range`` standard deviations span [-1, 1]). H and W that are not
    multiples of the VAE's factor are zero-padded (zero is the mean intensity) and the output cropped back.
    """

    def __init__(self, vae: FrozenPart, mask_encoder: nn.Module, encoder_stages: dict[int, int], num_classes: int,
                 mapper_width: int = 64, acr_sharpness: float = 4.0, input_std_range: float = 3.0):
        super().__init__()
        frozen: FrozenVAE = vae.module
        self.vae = vae
        self.num_classes, self.acr_sharpness, self.input_std_range = num_classes, acr_sharpness, input_std_range
        self.mapper = LatentMapper(frozen.latent_channels, mapper_width)
        self.mask_encoder = mask_encoder
        self.mask_stage_of_stride = {s: encoder_stages[max([t for t in encoder_stages if t <= s]
                                                           or [min(encoder_stages)])]
                                     for s in frozen.decoder_channels}
        self.mask_to_latent = nn.Conv2d(mask_encoder.output_channels[-1], frozen.latent_channels, 1)
        self.image_adapter = SkipAdapter(frozen.decoder_channels, frozen.encoder_channels)
        self.mask_adapter = SkipAdapter(frozen.decoder_channels, {
            s: mask_encoder.output_channels[i] for s, i in self.mask_stage_of_stride.items()})

    @property
    def frozen_vae(self) -> FrozenVAE:
        return self.vae.module

    def vae_input(self, x: torch.Tensor) -> torch.Tensor:
        """nnU-Net patches (B, C, H, W), z-scored -> RGB in [-1, 1] for the VAE."""
        x = x if x.shape[1] == 3 else x[:, :1].expand(-1, 3, -1, -1)
        return (x / self.input_std_range).clamp(-1, 1)

    @torch.no_grad()
    def mask_latent_target(self, labels: torch.Tensor) -> torch.Tensor:
        """z_g = E(G') for label maps (B, 1, H, W) (eq. 11, then the frozen encoder, eq. 1), no gradient."""
        padded, _ = self._pad(labels)
        return self.frozen_vae.encode(labels_to_image(padded, self.num_classes))

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        factor = self.frozen_vae.factor
        size = x.shape[2:]
        pad_h, pad_w = (-size[0]) % factor, (-size[1]) % factor
        return (F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x), (size[0], size[1])

    def branches(self, x: torch.Tensor) -> SemiGDAOutputs:
        """Both branches for patches (B, C, H, W); logits cropped to (H, W)."""
        x, (height, width) = self._pad(x)
        with torch.no_grad():
            image_latent, image_skips = self.frozen_vae.encode_with_features(self.vae_input(x))
        mask_skips = self.mask_encoder(x)
        mapped = self.mapper(image_latent)  # eq. 2
        mask_latent = self.mask_to_latent(mask_skips[-1])  # eq. 3
        if mask_latent.shape[2:] != mapped.shape[2:]:
            mask_latent = F.interpolate(mask_latent, size=mapped.shape[2:], mode="bilinear", align_corners=False)
        image = self.frozen_vae.decode(mapped, lambda s, h: self.image_adapter(s, h, image_skips[s]))  # eq. 4, 7
        mask = self.frozen_vae.decode(
            mask_latent, lambda s, h: self.mask_adapter(s, h, mask_skips[self.mask_stage_of_stride[s]]))
        return SemiGDAOutputs(mapped, mask_latent,
                              self._class_logits(image)[..., :height, :width],
                              self._class_logits(mask)[..., :height, :width])

    def _class_logits(self, image: torch.Tensor) -> torch.Tensor:
        return image_to_class_logits(image, self.num_classes, self.acr_sharpness)

    def forward(self, x: torch.Tensor):
        outputs = self.branches(x)
        if self.training:
            return outputs
        return averaged_branch_logits(outputs.image_logits, outputs.mask_logits)


def averaged_branch_logits(image_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """log of the mean of the two branches' softmax probabilities (B, K, H, W): softmax of it is that mean."""
    probabilities = (torch.softmax(image_logits.float(), 1) + torch.softmax(mask_logits.float(), 1)) / 2
    return torch.log(probabilities.clamp_min(1e-12))


# ---------------------------------------------------------------------- losses
def latent_supervised_loss(mapped: torch.Tensor, mask_latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_sup^p = ||z~_v - z_g||^2 + ||z_r - z_g||^2, each a mean over elements (eq. 5); z_g carries no gradient."""
    target = target.detach().float()
    return F.mse_loss(mapped.float(), target) + F.mse_loss(mask_latent.float(), target)


def latent_consistency_loss(mapped: torch.Tensor, mask_latent: torch.Tensor) -> torch.Tensor:
    """L_unsup^p = ||z~_v^u - z_r^u||^2, mean over elements, gradient to both branches (eq. 6)."""
    return F.mse_loss(mapped.float(), mask_latent.float())


def supervised_dice_loss(image_logits: torch.Tensor, mask_logits: torch.Tensor,
                         target_one_hot: torch.Tensor) -> torch.Tensor:
    """L_sup^s = Dice(y_v, y) + Dice(y_r, y) (eq. 8-9), batch soft Dice over all classes."""
    return soft_dice_loss(image_logits, target_one_hot) + soft_dice_loss(mask_logits, target_one_hot)


def mutual_dice_loss(image_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """L_unsup^s = Dice(y_v^u, y_r^u) + Dice(y_r^u, y_v^u) (eq. 10): each branch against the other's
    probabilities, which act as a fixed target (detached) in its term."""
    image_probabilities = torch.softmax(image_logits.float(), 1).detach()
    mask_probabilities = torch.softmax(mask_logits.float(), 1).detach()
    return soft_dice_loss(image_logits, mask_probabilities) + soft_dice_loss(mask_logits, image_probabilities)
