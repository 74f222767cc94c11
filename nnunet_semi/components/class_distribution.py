"""Semantic class distribution learning (SCDL; Su et al., "Semantic Class Distribution Learning for Debiasing
Semi-Supervised Medical Image Segmentation", 2026): Gaussian class proxies, their bidirectional alignment with
token embeddings (CDBA), the priors they inject into nnU-Net's decoder and the semantic anchors of labeled regions.

Shapes: tokens ``(B, L, D)`` (B samples, L tokens, D channels), proxies ``(C, D)`` (C classes incl. background).

Where we differ from the authors' released code, and why:

* P2E: the released code computes a KL divergence between two identical softmaxes, which is identically zero; we
  implement eq. 4.
* E2P (eq. 3) sums over samples, tokens and classes; we divide by the number of tokens (B x L) so that its scale
  does not depend on the batch or patch size.
* SAC (eq. 9) averages over the classes present in the batch (absent classes have no anchor), not over all C.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import distributed as dist
from torch import nn

from nnunet_semi.core.network import PlannedNetworkWrapper
from nnunet_semi.errors import UserError

INITIAL_PROXY_STD = 0.1  # sigma_c at initialisation, relative to unit-variance random means
EVAL_DRAW_SEED = 0  # the fixed draw of the priors in eval mode


def cosine_matrix(tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """cos(z_il, m_k) for tokens (B, L, D) and centres (K, D) -> (B, L, K)."""
    return F.normalize(tokens.float(), dim=-1) @ F.normalize(centres.float(), dim=-1).T


def class_assignment(similarity: torch.Tensor) -> torch.Tensor:
    """P(c|z) = softmax_c cos(z, mu_c) (eq. 2): (..., C) cosine similarities -> (..., C) probabilities."""
    return similarity.softmax(dim=-1)


def _e2p(similarity: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    return (assignment * (1 - similarity)).sum(-1).mean()


def _p2e(similarity: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    margin = ((2 * assignment - 1) * similarity).flatten(0, -2).mean(0)  # (C,)
    return torch.exp(-margin).mean()


def embedding_to_proxy_loss(tokens: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """E2P (eq. 3): sum_c P(c|z) (1 - cos(z, mu_c)), averaged over the B x L tokens. tokens (B, L, D), means (C, D)."""
    similarity = cosine_matrix(tokens, means)
    return _e2p(similarity, class_assignment(similarity))


def proxy_to_embedding_loss(tokens: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """P2E (eq. 4): (1/C) sum_c exp(-(E+_c - E-_c)), E+_c - E-_c = mean over tokens of (2 P(c|z) - 1) cos(z, mu_c)."""
    similarity = cosine_matrix(tokens, means)
    return _p2e(similarity, class_assignment(similarity))


def bidirectional_alignment_losses(tokens: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E2P, P2E) (eq. 3, 4) from one cosine matrix and one assignment, as a training step needs both."""
    similarity = cosine_matrix(tokens, means)
    assignment = class_assignment(similarity)
    return _e2p(similarity, assignment), _p2e(similarity, assignment)


def semantic_anchor_loss(means: torch.Tensor, anchors: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """L_SAC (eq. 9): mean over present classes of 1 - cos(mu_c, anchor_c); anchors (C, D) are detached, so only
    the proxies move. present (C,) bool; no present class gives 0."""
    if not bool(present.any()):
        return means.sum() * 0
    cos = F.cosine_similarity(means[present].float(), anchors[present].detach().float(), dim=-1)
    return (1 - cos).mean()


def distribution_weighted_prior(tokens: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Eq. 5: each token's class weights, softmax_c cos(z, u_cs) averaged over the S draws u_cs of every proxy,
    applied to the mean normalised draw of each class. tokens (B, L, D), samples (C, S, D) -> (B, L, D)."""
    num_classes, num_samples, dim = samples.shape
    similarity = cosine_matrix(tokens, samples.reshape(-1, dim)).unflatten(-1, (num_classes, num_samples))
    weights = similarity.softmax(dim=-2).mean(-1)  # (B, L, C)
    return weights @ F.normalize(samples.float(), dim=-1).mean(1)


def centre_similarity_prior(tokens: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Eq. 6: cos(z, mu_c) for every class. tokens (B, L, D), means (C, D) -> (B, L, C)."""
    return cosine_matrix(tokens, means)


def sampling_prior(tokens: torch.Tensor, noise_scale: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. 7: mean over the S draws of the normalised perturbed tokens z + s * eps (learnable per-channel scale s).
    tokens (B, L, D), noise_scale (D,), eps (S, B or 1, L, D) standard normal -> (B, L, D)."""
    return F.normalize(tokens.float() + eps * noise_scale.float(), dim=-1).mean(0)


class ClassProxies(nn.Module):
    """One learnable Gaussian N(mu_c, diag(sigma_c^2)) per class (eq. 1), randomly initialised."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.means = nn.Parameter(torch.randn(num_classes, dim))
        self.log_stds = nn.Parameter(torch.full((num_classes, dim), math.log(INITIAL_PROXY_STD)))

    def draws(self, eps: torch.Tensor) -> torch.Tensor:
        """(C, S, D) draws u_cs = mu_c + sigma_c * eps_cs from (C, S, D) standard normal ``eps``."""
        return self.means[:, None] + self.log_stds.exp()[:, None] * eps


class TokenEmbedder(nn.Module):
    """Encoder features (B, F, *spatial) -> token embeddings (B, L, D): adaptive average pooling to at most
    ``max_grid`` tokens per axis, then a two-layer 1x1-convolution MLP (LeakyReLU)."""

    def __init__(self, conv_op: type[nn.Module], in_channels: int, dim: int, max_grid: int):
        super().__init__()
        self.max_grid = max_grid
        self.mlp = nn.Sequential(conv_op(in_channels, dim, 1), nn.LeakyReLU(0.01), conv_op(dim, dim, 1))

    def grid(self, features: torch.Tensor) -> tuple[int, ...]:
        return tuple(min(size, self.max_grid) for size in features.shape[2:])

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        grid = self.grid(features)
        pooled = adaptive_average(features, grid)
        return self.mlp(pooled).flatten(2).transpose(1, 2), grid


def adaptive_average(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pooling of (B, C, *spatial) in 2D or 3D."""
    return F.adaptive_avg_pool3d(x, size) if x.ndim == 5 else F.adaptive_avg_pool2d(x, size)


def resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(Bi/tri)linear resizing of (B, C, *spatial) to ``size``."""
    return F.interpolate(x, size=size, mode="trilinear" if x.ndim == 5 else "bilinear", align_corners=False)


def zero_projection(conv_op: type[nn.Module], in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1 convolution initialised to zero: the prior starts without effect on the decoder and learns its own."""
    projection = conv_op(in_channels, out_channels, 1)
    nn.init.zeros_(projection.weight)
    nn.init.zeros_(projection.bias)
    return projection


def require_unet_decoder(planned: nn.Module) -> None:
    """SCDL adds priors at every stage of dynamic_network_architectures' UNetDecoder (PlainConvUNet, ResEnc UNet)."""
    decoder = getattr(planned, "decoder", None)
    encoder = getattr(planned, "encoder", None)
    if not isinstance(decoder, UNetDecoder) or not hasattr(encoder, "output_channels"):
        raise UserError(f"SCDL injects its class priors into every decoder stage of nnU-Net's U-Nets "
                        f"(PlainConvUNet, ResidualEncoderUNet: an encoder with 'output_channels' and a UNetDecoder). "
                        f"The plans' architecture {type(planned).__name__} has decoder {type(decoder).__name__}; "
                        f"use plans with one of those architectures.")


class SCDLNetwork(PlannedNetworkWrapper):
    """nnU-Net's planned U-Net with token embeddings, class proxies and, with ``use_priors``, the three priors
    (eq. 5-7) concatenated, projected by a zero-initialised 1x1 convolution per decoder stage, resized and added to
    that stage's output (before its segmentation head), in training and at inference.

    Tokens come from an encoder stage (``token_stage``, default the deepest): the priors are injected into the
    decoder, so they cannot come from it, and SAC runs the shared encoder only. In training mode the priors use
    fresh random draws for every sample; in eval mode (nnU-Net's validation, the EMA teacher, ``nnUNetv2_predict``)
    one fixed draw (seed ``EVAL_DRAW_SEED``, shared by all samples of a batch), so the same input always gives the
    same output, whatever its batch, and the decoder sees priors from the distribution it was trained with (the
    draws' means would give priors it never saw: e.g. eq. 7's average of noisy unit vectors is shorter than 1).
    """

    def __init__(self, planned: nn.Module, num_classes: int, token_dim: int = 256, token_grid: int = 12,
                 token_stage: int = -1, prior_samples: int = 50, use_priors: bool = True):
        require_unet_decoder(planned)
        super().__init__(planned)
        conv_op, channels = planned.encoder.conv_op, planned.encoder.output_channels
        if not -len(channels) <= token_stage < len(channels):
            raise UserError(f"token_stage = {token_stage} is not a stage of this encoder ({len(channels)} stages: "
                            f"use 0..{len(channels) - 1} or -1..-{len(channels)}).")
        self.token_stage = token_stage
        self.prior_samples = prior_samples
        self.embedder = TokenEmbedder(conv_op, channels[token_stage], token_dim, token_grid)
        self.proxies = ClassProxies(num_classes, token_dim)
        self.use_priors = use_priors
        if use_priors:
            self.log_noise_scale = nn.Parameter(torch.full((token_dim,), math.log(INITIAL_PROXY_STD)))
            prior_channels = 2 * token_dim + num_classes
            self.prior_projections = nn.ModuleList(
                zero_projection(conv_op, prior_channels, stage.output_channels) for stage in planned.decoder.stages)
        else:  # sigma_c only shapes the priors: frozen without them (also keeps DDP free of unused parameters)
            self.proxies.log_stds.requires_grad_(False)

    def tokens(self, skips: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Token embeddings (B, L, D) of the encoder outputs and their grid shape."""
        return self.embedder(skips[self.token_stage])

    def priors(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """(B, L, D) tokens -> (B, 2D + C, *grid) prior maps: eq. 5, eq. 6, eq. 7 concatenated."""
        proxy_eps, token_eps = self.standard_normal_draws(tokens)
        priors = torch.cat((distribution_weighted_prior(tokens, self.proxies.draws(proxy_eps)),
                            centre_similarity_prior(tokens, self.proxies.means),
                            sampling_prior(tokens, self.log_noise_scale.exp(), token_eps)), dim=-1)
        return priors.transpose(1, 2).unflatten(2, grid).to(tokens.dtype)

    def standard_normal_draws(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eps for the proxy draws (C, S, D) and the token draws (S, B, L, D): random in training, a fixed draw
        shared by the batch (S, 1, L, D) in eval mode."""
        num_classes, dim = self.proxies.means.shape
        batch, num_tokens, _ = tokens.shape
        generator = None if self.training else torch.Generator(tokens.device).manual_seed(EVAL_DRAW_SEED)
        proxy_eps = torch.randn((num_classes, self.prior_samples, dim), device=tokens.device, generator=generator)
        token_eps = torch.randn((self.prior_samples, batch if self.training else 1, num_tokens, dim),
                                device=tokens.device, generator=generator)
        return proxy_eps, token_eps

    def decode(self, skips: list[torch.Tensor], priors: torch.Tensor):
        """UNetDecoder.forward of dynamic_network_architectures with each stage's prior added to its output."""
        decoder = self.decoder
        lower, outputs = skips[-1], []
        for s, stage in enumerate(decoder.stages):
            x = stage(torch.cat((decoder.transpconvs[s](lower), skips[-(s + 2)]), 1))
            x = x + resize(self.prior_projections[s](priors), tuple(x.shape[2:]))
            if decoder.deep_supervision:
                outputs.append(decoder.seg_layers[s](x))
            elif s == len(decoder.stages) - 1:
                outputs.append(decoder.seg_layers[-1](x))
            lower = x
        outputs = outputs[::-1]
        return outputs if decoder.deep_supervision else outputs[0]

    def forward(self, x: torch.Tensor, return_tokens: bool = False):
        """Logits as nnU-Net's network returns them; with ``return_tokens`` also the tokens (B, L, D)."""
        skips = self.encoder(x)
        tokens, grid = self.tokens(skips)
        outputs = self.decode(skips, self.priors(tokens, grid)) if self.use_priors else self.decoder(skips)
        return (outputs, tokens) if return_tokens else outputs


@torch.no_grad()
def semantic_anchors(network: SCDLNetwork, x: torch.Tensor, labels: torch.Tensor, classes: list[int],
                     num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: for each class c in ``classes``, the encoder tokens of the labeled images with every non-class voxel
    set to zero, averaged over the class region (each token weighted by its fraction of class voxels).

    x (B, C_in, *spatial), labels (B, 1, *spatial) -> anchors (C, D) and present (C,) bool. Under DDP the region
    sums are added over all workers, so every worker gets the anchors of the global batch.
    """
    sums = torch.zeros((num_classes, network.proxies.means.shape[1]), device=x.device)
    weights = torch.zeros(num_classes, device=x.device)
    for c in classes:
        region = (labels == c).to(x.dtype)
        tokens, grid = network.tokens(network.encoder(x * region))
        token_weights = adaptive_average(region, grid).flatten(1)  # (B, L)
        sums[c] = (token_weights[..., None] * tokens.float()).sum((0, 1))
        weights[c] = token_weights.sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(weights)
    present = weights > 0
    return sums / weights.clamp_min(1e-8)[:, None], present
