"""SCDL's equations on tiny tensors against hand-computed values, their gradients, the priors in the decoder, and
Cross Pseudo Supervision's loss."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnunet_semi.components.class_distribution import (
    SCDLNetwork,
    bidirectional_alignment_losses,
    centre_similarity_prior,
    class_assignment,
    cosine_matrix,
    distribution_weighted_prior,
    embedding_to_proxy_loss,
    proxy_to_embedding_loss,
    sampling_prior,
    semantic_anchor_loss,
    semantic_anchors,
)
from nnunet_semi.errors import UserError
from nnunet_semi.trainers.cps import cross_pseudo_supervision_loss

E = math.e
# two tokens (B=1, L=2, D=2) lying on the two proxies' directions
TOKENS = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
MEANS = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
P_SAME = E / (E + 1)  # softmax([1, 0])[0]


def _tiny_unet(conv=nn.Conv2d, norm=nn.InstanceNorm2d, deep_supervision=False):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    return PlainConvUNet(1, 3, (4, 8, 8), conv, 3, (1, 2, 2), 1, 3, (1, 1), norm_op=norm,
                         norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=deep_supervision)


def _scdl(use_priors=True, **kwargs):
    torch.manual_seed(0)
    return SCDLNetwork(_tiny_unet(**kwargs), 3, token_dim=8, token_grid=3, prior_samples=5, use_priors=use_priors)


def test_class_assignment_eq2_hand_value():
    probabilities = class_assignment(cosine_matrix(TOKENS, MEANS))
    torch.testing.assert_close(probabilities, torch.tensor([[[P_SAME, 1 - P_SAME], [1 - P_SAME, P_SAME]]]))


def test_e2p_eq3_hand_value():
    # each token: P_same * (1 - 1) + P_other * (1 - 0) = 1 - P_same, averaged over the 2 tokens
    assert embedding_to_proxy_loss(TOKENS, MEANS).item() == pytest.approx(1 - P_SAME)


def test_p2e_eq4_hand_value():
    # class 0: mean over tokens of (2P - 1) cos = ((2 P_same - 1) * 1 + (2 (1 - P_same) - 1) * 0) / 2
    margin = (2 * P_SAME - 1) / 2
    assert proxy_to_embedding_loss(TOKENS, MEANS).item() == pytest.approx(math.exp(-margin))


def test_bidirectional_alignment_losses_equal_eq3_and_eq4():
    assert torch.allclose(torch.stack(bidirectional_alignment_losses(TOKENS, MEANS)),
                          torch.stack((embedding_to_proxy_loss(TOKENS, MEANS), proxy_to_embedding_loss(TOKENS, MEANS))))


@pytest.mark.parametrize("loss", [embedding_to_proxy_loss, proxy_to_embedding_loss])
def test_cdba_gradients_reach_embeddings_and_proxies(loss):
    tokens = torch.randn(2, 5, 4, requires_grad=True)
    means = torch.randn(3, 4, requires_grad=True)
    loss(tokens, means).backward()
    assert tokens.grad.abs().sum() > 0 and means.grad.abs().sum() > 0


def test_sac_eq9_hand_value_skips_absent_classes_and_moves_proxies_only():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], requires_grad=True)
    anchors = torch.tensor([[1.0, 1.0], [0.0, -1.0], [0.0, 0.0]], requires_grad=True)
    present = torch.tensor([True, True, False])
    loss = semantic_anchor_loss(means, anchors, present)
    assert loss.item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 2) / 2)
    loss.backward()
    assert anchors.grad is None and means.grad[:2].abs().sum() > 0 and means.grad[2].abs().sum() == 0
    assert semantic_anchor_loss(means, anchors, torch.zeros(3, dtype=torch.bool)).item() == 0


def test_semantic_anchors_eq8_region_mean_and_gradient_to_proxies_only():
    network = _scdl()
    x = torch.randn(2, 1, 16, 16)
    labels = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    labels[0, 0, :8] = 1  # class 1 in the upper half of sample 0 only, class 2 absent
    anchors, present = semantic_anchors(network, x, labels, [0, 1], 3)
    assert present.tolist() == [True, True, False]
    tokens, grid = network.tokens(network.encoder(x * (labels == 1)))
    assert grid == (3, 3)
    weights = torch.nn.functional.adaptive_avg_pool2d((labels == 1).float(), grid).flatten(1)
    expected = (weights[..., None] * tokens).sum((0, 1)) / weights.sum()
    torch.testing.assert_close(anchors[1], expected)
    semantic_anchor_loss(network.proxies.means, anchors, present).backward()
    assert network.proxies.means.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in network.named_parameters() if name != "proxies.means")


def test_distribution_weighted_prior_eq5_hand_value():
    samples = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])  # C=2 proxies, S=1 draw each
    prior = distribution_weighted_prior(torch.tensor([[[1.0, 0.0]]]), samples)
    torch.testing.assert_close(prior, torch.tensor([[[P_SAME, 1 - P_SAME]]]))


def test_centre_similarity_prior_eq6_and_sampling_prior_eq7():
    torch.testing.assert_close(centre_similarity_prior(TOKENS, MEANS), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    # token 0 = (1, 0), scale 1, two draws eps = (0, 1) and (0, -1): mean of (1, 1)/sqrt2 and (1, -1)/sqrt2
    eps = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]], [[[0.0, -1.0], [0.0, 0.0]]]])  # (S=2, 1, L=2, D=2)
    scale = torch.ones(2, requires_grad=True)
    prior = sampling_prior(TOKENS, scale, eps)
    torch.testing.assert_close(prior, torch.tensor([[[1 / math.sqrt(2), 0.0], [0.0, 1.0]]]))
    prior.sum().backward()
    assert scale.grad.abs().sum() > 0  # the noise scale is learnable


def test_priors_start_without_effect_and_change_the_decoder_once_learned():
    network = _scdl().eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(network(x), network.planned(x))  # zero-initialised projections
    with torch.no_grad():
        for projection in network.prior_projections:
            projection.weight.normal_()
    assert not torch.allclose(network(x), network.planned(x), atol=1e-3)


def test_priors_are_deterministic_in_eval_and_sampled_in_training():
    network = _scdl()
    with torch.no_grad():
        for projection in network.prior_projections:
            projection.weight.normal_()
    x = torch.randn(2, 1, 16, 16)
    network.eval()
    assert torch.equal(network(x), network(x))
    torch.testing.assert_close(network(x[:1]), network(x)[:1])  # the same draw whatever the batch
    network.train()
    assert not torch.equal(network(x), network(x))


def test_tokens_gradients_and_deep_supervision_3d():
    network = SCDLNetwork(_tiny_unet(nn.Conv3d, nn.InstanceNorm3d, deep_supervision=True), 3, token_dim=8,
                          token_grid=2, prior_samples=4)
    with torch.no_grad():  # as after some training: zero-initialised projections pass no gradient to the priors
        for projection in network.prior_projections:
            projection.weight.normal_()
    outputs, tokens = network(torch.randn(2, 1, 8, 16, 16), return_tokens=True)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 16, 16), (2, 3, 4, 8, 8)]
    assert tokens.shape == (2, 8, 8)  # (B, L = 2 x 2 x 2 tokens, D)
    (sum(o.mean() for o in outputs) + embedding_to_proxy_loss(tokens, network.proxies.means)).backward()
    for name in ("proxies.means", "proxies.log_stds", "log_noise_scale", "embedder.mlp.0.weight"):
        assert dict(network.named_parameters())[name].grad.abs().sum() > 0, name


def test_without_priors_the_network_is_the_planned_one_and_sigma_is_frozen():
    network = _scdl(use_priors=False).eval()
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(network(x), network.planned(x))
    assert not network.proxies.log_stds.requires_grad


def test_other_architectures_are_named_in_the_error():
    class NotAUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = nn.Identity(), nn.Identity()

    with pytest.raises(UserError, match="NotAUNet has decoder Identity"):
        SCDLNetwork(NotAUNet(), 3)
    with pytest.raises(UserError, match="token_stage = 3 is not a stage of this encoder"):
        SCDLNetwork(_tiny_unet(), 3, token_stage=3)


def test_cross_pseudo_supervision_hand_value():
    logits_a = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)  # argmax 0
    logits_b = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # argmax 1
    expected = math.log(1 + E ** 2) + math.log(1 + E)  # CE(a, 1) + CE(b, 0)
    assert cross_pseudo_supervision_loss(logits_a, logits_b).item() == pytest.approx(expected)
    a, b = logits_a.clone().requires_grad_(), logits_b.clone().requires_grad_()
    cross_pseudo_supervision_loss(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_cross_pseudo_supervision_regions_use_thresholded_sigmoids():
    logits_a = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    logits_b = torch.tensor([-3.0, 1.0]).view(1, 2, 1, 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(logits_a, torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)) + \
        bce(logits_b, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    torch.testing.assert_close(cross_pseudo_supervision_loss(logits_a, logits_b, regions=True), expected)
