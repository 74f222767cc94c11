"""SemiGDA's equations on tiny tensors against hand-computed values, the class reversion round trip, frozen VAE parts,
and the two-branch network with TAESD and with a tiny random AutoencoderKL."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from nnunet_semi.components.dual_distribution import (
    SemiGDANetwork,
    class_levels,
    image_to_class_logits,
    labels_to_image,
    latent_consistency_loss,
    latent_supervised_loss,
    mutual_dice_loss,
    supervised_dice_loss,
    truncated_encoder,
)
from nnunet_semi.components.soft_losses import one_hot, soft_dice_loss
from nnunet_semi.components.vae import FrozenVAE, load_diffusers_vae, vae_folder
from nnunet_semi.core.frozen import FrozenPart, trainable_parameters
from nnunet_semi.core.teacher import EMATeacher
from nnunet_semi.errors import UserError
from nnunet_semi.trainers.semigda import nnUNetTrainerSemiGDA

TAESD = Path(__file__).resolve().parents[2] / "shared" / "weights" / "taesd" / "diffusers_AutoencoderTiny"


def _encoder(in_channels=1, strides=(1, 2, 2, 2)):
    from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
    return PlainConvEncoder(in_channels, len(strides), (4, 8, 8, 8), nn.Conv2d, 3, strides, 1, conv_bias=True,
                            norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                            return_skips=True)


def _network(folder: Path, num_classes=3, in_channels=1) -> SemiGDANetwork:
    torch.manual_seed(0)
    vae = FrozenPart(FrozenVAE(load_diffusers_vae(folder)), source=str(folder))
    encoder, stages = truncated_encoder(_encoder(in_channels), vae.module.factor)
    return SemiGDANetwork(vae, encoder, stages, num_classes, mapper_width=8)


# ---------------------------------------------------------------------- eq. 11
def test_class_levels_eq11_span_minus_one_to_one():
    assert class_levels(2).tolist() == [-1.0, 1.0]
    assert class_levels(3).tolist() == [-1.0, 0.0, 1.0]
    assert torch.allclose(class_levels(5), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_class_reversion_round_trip_is_exact_for_every_class(num_classes):
    labels = torch.arange(num_classes).view(1, 1, 1, -1).repeat(2, 1, 3, 1)
    image = labels_to_image(labels, num_classes)
    assert image.shape == (2, 3, 3, num_classes) and torch.equal(image[:, 0], image[:, 2])
    logits = image_to_class_logits(image, num_classes, sharpness=4.0)
    assert torch.equal(logits.argmax(1, keepdim=True), labels)
    assert torch.all(logits.max(1).values == 0)  # exactly on a level


def test_class_reversion_eq11_hand_value():
    image = torch.full((1, 3, 1, 1), 0.5)  # K = 3: levels -1, 0, 1, spacing 1
    logits = image_to_class_logits(image, 3, sharpness=4.0)
    assert torch.allclose(logits.flatten(), torch.tensor([-4 * 1.5 ** 2, -4 * 0.5 ** 2, -4 * 0.5 ** 2]))


# ---------------------------------------------------------------------- eq. 5, 6, 8-10, 14
def test_latent_losses_eq5_eq6_hand_values():
    mapped, mask, target = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert latent_supervised_loss(mapped, mask, target).item() == pytest.approx((0 + 4) / 2 + (1 + 0) / 2)
    assert latent_consistency_loss(mapped, mask).item() == pytest.approx((1 + 4) / 2)


def test_latent_consistency_eq6_moves_both_branches():
    mapped, mask = torch.ones(1, 2, requires_grad=True), torch.zeros(1, 2, requires_grad=True)
    latent_consistency_loss(mapped, mask).backward()
    assert mapped.grad.abs().sum() > 0 and mask.grad.abs().sum() > 0


def test_supervised_dice_eq8_9_hand_value():
    # one voxel pair, 2 classes: p = (0.25, 0.75) in both voxels of the image branch, target classes (1, 0)
    logits = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1).repeat(1, 1, 1, 2)
    target = one_hot(torch.tensor([[[[1, 0]]]]), 2)
    # class 0: 2*0.25 / (0.5 + 1); class 1: 2*0.75 / (1.5 + 1)
    dice = 1 - (0.5 / 1.5 + 1.5 / 2.5) / 2
    perfect = 100 * (2 * target - 1)
    assert supervised_dice_loss(logits, perfect, target).item() == pytest.approx(dice, abs=1e-4)


def test_mutual_dice_eq10_each_branch_against_the_others_fixed_prediction():
    torch.manual_seed(0)
    image_logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mask_logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mutual_dice_loss(image_logits, mask_logits).backward()
    image_only = image_logits.detach().clone().requires_grad_(True)
    soft_dice_loss(image_only, torch.softmax(mask_logits.detach(), 1)).backward()
    assert torch.allclose(image_logits.grad, image_only.grad, atol=1e-7)
    expected = (soft_dice_loss(image_logits, torch.softmax(mask_logits, 1))
                + soft_dice_loss(mask_logits, torch.softmax(image_logits, 1)))
    assert mutual_dice_loss(image_logits, mask_logits).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("step, expected", [(0, 0.1 * math.exp(-5)), (50, 0.1 * math.exp(-5 * 0.25)), (100, 0.1)])
def test_unsupervised_weight_eq14(step, expected):
    trainer = object.__new__(nnUNetTrainerSemiGDA)
    trainer.global_step, trainer.num_epochs, trainer.num_iterations_per_epoch = step, 10, 10
    weight = trainer.ramped_weight(trainer.unsupervised_weight, trainer.unsupervised_rampup,
                                   trainer.unsupervised_rampup_fraction)
    assert weight == pytest.approx(expected)


# ---------------------------------------------------------------------- VAE and network
def test_frozen_vae_steps_reproduce_diffusers(tiny_kl_folder):
    vae = load_diffusers_vae(tiny_kl_folder)
    frozen = FrozenVAE(vae)
    assert frozen.factor == 2 and frozen.latent_channels == 4
    assert frozen.encoder_channels == {1: 8, 2: 16} and frozen.decoder_channels == {2: 16, 1: 8}
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        assert torch.allclose(frozen.encode(x), mean * vae.config.scaling_factor, atol=1e-6)
        assert torch.allclose(frozen.decode(frozen.encode(x)), vae.decode(mean).sample, atol=1e-5)


@pytest.mark.skipif(not TAESD.is_dir(), reason="TAESD weights (../shared/weights/taesd) not present")
def test_taesd_network_branches_and_averaged_inference():
    network = _network(TAESD, num_classes=2, in_channels=3)
    assert network.frozen_vae.factor == 8 and set(network.frozen_vae.decoder_channels) == {1, 2, 4, 8}
    x = torch.randn(2, 3, 32, 40)
    outputs = network.train()(x)
    assert outputs.mapped_latent.shape == outputs.mask_latent.shape == (2, 4, 4, 5)
    assert outputs.image_logits.shape == outputs.mask_logits.shape == (2, 2, 32, 40)
    with torch.no_grad():
        logits = network.eval()(x)
    assert torch.allclose(logits.exp().sum(1), torch.ones(2, 32, 40), atol=1e-5)


def test_untrained_adapters_leave_the_frozen_decoder_unchanged(tiny_kl_folder):
    network = _network(tiny_kl_folder).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        outputs = network.branches(x)
        plain = network.frozen_vae.decode(outputs.mapped_latent)
    assert torch.equal(outputs.image_logits, image_to_class_logits(plain, 3, network.acr_sharpness))


def test_sizes_that_are_not_multiples_of_the_vae_factor_are_padded_and_cropped(tiny_kl_folder):
    network = _network(tiny_kl_folder).train()
    outputs = network(torch.randn(2, 1, 9, 11))
    assert outputs.image_logits.shape == (2, 3, 9, 11) and outputs.mapped_latent.shape == (2, 4, 5, 6)
    assert network.mask_latent_target(torch.randint(0, 3, (2, 1, 9, 11))).shape == (2, 4, 5, 6)


def test_frozen_vae_stays_frozen_out_of_optimiser_checkpoint_and_ema(tiny_kl_folder):
    network = _network(tiny_kl_folder)
    vae_tensors = {name: t.clone() for name, t in network.vae.named_buffers()}
    assert vae_tensors and not any(True for _ in network.vae.parameters())
    assert not any(k.startswith("vae.") for k in network.state_dict())
    teacher = EMATeacher(network, 0.9)
    assert teacher.module.vae is network.vae

    optimizer = torch.optim.SGD(list(trainable_parameters(network)), lr=0.1, momentum=0.9)
    network.train()
    assert not network.vae.training
    x, labels = torch.randn(2, 1, 8, 8), torch.randint(0, 3, (2, 1, 8, 8))
    outputs = network(x)
    loss = (latent_supervised_loss(outputs.mapped_latent, outputs.mask_latent, network.mask_latent_target(labels))
            + supervised_dice_loss(outputs.image_logits, outputs.mask_logits, one_hot(labels, 3)))
    loss.backward()
    assert all(p.grad is not None for p in network.mapper.parameters())
    assert all(p.grad is not None for p in network.mask_encoder.parameters())
    optimizer.step()
    teacher.update(network, 1)
    assert all(torch.equal(t, vae_tensors[name]) for name, t in network.vae.named_buffers())
    assert all(not t.requires_grad for t in network.vae.buffers())


def test_truncated_encoder_stops_at_the_vae_factor():
    encoder, stages = truncated_encoder(_encoder(strides=(1, 2, 2, 2)), 4)
    assert len(encoder.stages) == 3 and stages == {1: 0, 2: 1, 4: 2}
    with pytest.raises(ValueError, match="less than the VAE's factor 16"):
        truncated_encoder(_encoder(strides=(1, 2, 2, 2)), 16)


def test_missing_vae_names_the_variable_and_the_taesd_fallback(monkeypatch, tmp_path):
    monkeypatch.delenv("nnUNet_semi_sd_vae", raising=False)
    with pytest.raises(UserError, match="nnUNet_semi_sd_vae is not set.*nnUNetTrainerSemiGDA_TAESD"):
        vae_folder("sd")
    monkeypatch.setenv("nnUNet_semi_sd_vae", str(tmp_path))
    with pytest.raises(UserError, match="config.json is missing"):
        vae_folder("sd")
