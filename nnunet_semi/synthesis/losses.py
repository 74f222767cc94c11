"""GAN losses: non-saturating logistic loss (Goodfellow et al. 2014, Sec. 3) and the R1 gradient penalty
(Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?", Eq. 9), as used by StyleGAN2."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: E[-log sigmoid(D(G(z)))] = E[softplus(-D(G(z)))]."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: E[softplus(D(G(z)))] + E[softplus(-D(x))]."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real_images: torch.Tensor,
               gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """R1 = gamma / 2 * E_x[ ||grad_x D(x)||^2 ] on real images (Mescheder et al. 2018, Eq. 9).

    ``discriminator`` may include the augmentation (ADA differentiates through it, taking the gradient with
    respect to the un-augmented image). Returns the penalty (differentiable w.r.t. D's parameters) and the logits.
    """
    images = real_images.detach().requires_grad_(True)
    logits = discriminator(images)
    (grad,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
    penalty = grad.float().square().sum(dim=list(range(1, grad.ndim))).mean() * (gamma / 2.0)
    return penalty, logits


def path_length_penalty(synthesize: Callable[[torch.Tensor], torch.Tensor], ws: torch.Tensor, pl_mean: torch.Tensor,
                        decay: float, noise: torch.Tensor | None = None,
                        world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleGAN2's path-length regulariser (Karras et al. 2020, Sec. 3.2, Eq. 4): E[(||J_w^T y||_2 - a)^2].

    ``ws`` [N, num_ws, w_dim] (when it carries the mapping network's graph, the penalty trains the mapping too, as in
    the official code); ``synthesize(ws)`` -> images [N, C, H, W]; y ~ N(0, I) / sqrt(H W) (``noise`` for tests); the
    length is the root of the mean over the num_ws layers of the squared gradient norm (as the official
    code computes it); a, the exponential moving average of the mean length with ``decay`` (0.01), is averaged over
    the ``world_size`` ranks. Returns the penalty (differentiable w.r.t. the synthesis parameters) and the new a.
    """
    if not ws.requires_grad:
        ws = ws.detach().requires_grad_(True)
    images = synthesize(ws).float()
    if noise is None:
        noise = torch.randn_like(images)
    noise = noise / (images.shape[2] * images.shape[3]) ** 0.5
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
    batch_mean = lengths.mean().detach()
    if world_size > 1:
        dist.all_reduce(batch_mean)
        batch_mean /= world_size
    new_mean = pl_mean + decay * (batch_mean - pl_mean)
    return (lengths - new_mean).square().mean(), new_mean


def default_r1_gamma(resolution: int, batch_size: int) -> float:
    """StyleGAN2-ADA's heuristic for its "auto" configuration: gamma = 0.0002 * resolution^2 / batch size."""
    return 0.0002 * resolution ** 2 / batch_size
