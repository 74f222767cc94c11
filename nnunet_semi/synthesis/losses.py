"""GAN losses: non-saturating logistic loss (Goodfellow et al. 2014, Sec. 3) and the R1 gradient penalty
(Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?", Eq. 9), as used by StyleGAN2."""
from __future__ import annotations

from collections.abc import Callable

import torch
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


def default_r1_gamma(resolution: int, batch_size: int) -> float:
    """StyleGAN2-ADA's heuristic for its "auto" configuration: gamma = 0.0002 * resolution^2 / batch size."""
    return 0.0002 * resolution ** 2 / batch_size
