"""SRA-Seg building blocks against hand-computed values: soft losses, soft-edged mixing, pseudo-label filtering,
similarity alignment (value and gradient), feature extractors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_semi.components.feature_extractors import (
    DINOV2_WEIGHTS_VARIABLE,
    load_efficientnet_lite0,
    load_feature_extractor,
    patches_to_rgb,
)
from nnunet_semi.components.soft_losses import (
    SoftDiceCELoss,
    soft_cross_entropy,
    soft_dice_loss,
    soft_targets_for_outputs,
)
from nnunet_semi.components.mixing import blend, box_hole_mask, soft_box_mask, soften_edges
from nnunet_semi.components.pseudo_labels import filtered_hard_pseudo_labels, largest_component_per_class
from nnunet_semi.errors import UserError
from nnunet_semi.trainers.sra_seg import (
    nearest_real_distances,
    decoder_feature_statistics,
    nnUNetTrainerSRASeg,
    nnUNetTrainerSRASeg_halfPlainWarmup,
    similarity_alignment_loss,
)

# two pixels, two classes: softmax(logits) = [[0.5, 0.5], [0.25, 0.75]] per pixel (class 0, class 1)
LOGITS = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3)]]]])  # (B=1, C=2, 1, 2)
TARGET = torch.tensor([[[[1.0, 0.4]], [[0.0, 0.6]]]])


def test_soft_dice_hand_value():
    dice_0 = 2 * (0.5 * 1 + 0.25 * 0.4) / (0.5 + 0.25 + 1 + 0.4)
    dice_1 = 2 * (0.5 * 0 + 0.75 * 0.6) / (0.5 + 0.75 + 0 + 0.6)
    for reduction in ("batch", "sample"):  # one sample: both reductions agree
        assert soft_dice_loss(LOGITS, TARGET, reduction, smooth=0).item() == pytest.approx(
            1 - (dice_0 + dice_1) / 2, abs=1e-6)
    hard = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    assert soft_dice_loss(hard * 100, hard, smooth=0).item() == pytest.approx(0, abs=1e-6)


def test_soft_dice_batch_reduction_is_eq_13_and_differs_from_per_sample():
    """Sample 1 has class 1, sample 2 has none; the prediction is 0.25 / 0.75 everywhere (one pixel each)."""
    logits = torch.tensor([[[[0.0]], [[math.log(3)]]], [[[0.0]], [[math.log(3)]]]])  # (B=2, C=2, 1, 1)
    target = torch.tensor([[[[0.0]], [[1.0]]], [[[1.0]], [[0.0]]]])
    # eq. 13: sums over the batch per class. class 0: 2 * 0.25 / (0.5 + 1); class 1: 2 * 0.75 / (1.5 + 1)
    batch = 1 - (2 * 0.25 / 1.5 + 2 * 0.75 / 2.5) / 2
    assert soft_dice_loss(logits, target, "batch", smooth=0).item() == pytest.approx(batch, abs=1e-6)
    # released code: per sample. sample 1: class 0 0 / 1.25, class 1 1.5 / 1.75; sample 2: 0.5 / 1.25, 0 / 0.75
    sample = 1 - (0 + 1.5 / 1.75 + 0.5 / 1.25 + 0) / 4
    assert soft_dice_loss(logits, target, "sample", smooth=0).item() == pytest.approx(sample, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        soft_dice_loss(logits, target, "voxel")


def test_soft_cross_entropy_hand_value():
    expected = -0.5 * (1 * math.log(0.5) + 0.4 * math.log(0.25) + 0.6 * math.log(0.75))
    assert soft_cross_entropy(LOGITS, TARGET).item() == pytest.approx(expected, abs=1e-6)
    assert SoftDiceCELoss("sample")(LOGITS, TARGET).item() == pytest.approx(
        soft_dice_loss(LOGITS, TARGET).item() + expected, abs=1e-6)


def test_soft_targets_are_averaged_to_deep_supervision_scales():
    target = torch.zeros(1, 2, 4, 4)
    target[:, 1, :2, :2] = 1.0
    target[:, 1, 0, 2] = 1.0  # one voxel of class 1 in the top-right 2x2 block
    target[:, 0] = 1 - target[:, 1]
    outputs = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    full, low = soft_targets_for_outputs(target, outputs)
    assert torch.equal(full, target)
    assert low[0, 1].tolist() == [[1.0, 0.25], [0.0, 0.0]]  # averages, not nearest samples
    assert torch.allclose(low.sum(1), torch.ones(1, 2, 2))


def test_blurred_box_mask():
    generator = torch.Generator().manual_seed(0)
    hard = box_hole_mask(3, (9, 12), 2 / 3, generator=generator)
    assert hard.shape == (3, 1, 9, 12)
    assert [(m == 0).sum().item() for m in hard] == [6 * 8] * 3  # the hole covers 2/3 of each dimension
    assert torch.equal(soften_edges(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))  # border not darkened
    mask = torch.ones(1, 1, 5, 5)
    mask[0, 0, 2:, 2:] = 0
    blurred = soften_edges(mask)
    assert blurred[0, 0, 1, 1] == pytest.approx(8 / 9)  # one hole voxel among nine neighbours
    assert blurred[0, 0, 0, 0] == 1.0 and blurred[0, 0, 4, 4] == 0.0  # corners: 4 neighbours, none/all holes
    assert blurred[0, 0, 1, 4] == pytest.approx(4 / 6)  # border pixel: averages 6 in-patch voxels only
    soft = soft_box_mask(2, (8, 8, 8))
    assert soft.shape == (2, 1, 8, 8, 8) and soft.min() >= 0 and soft.max() <= 1
    assert (soft < 0.5).any() and (soft == 1).any()  # 3D works: a hole and untouched voxels


def test_mixtures_and_labels_pixel_example():
    alpha = torch.tensor(0.6)
    assert blend(torch.tensor(100.0), torch.tensor(50.0), alpha).item() == pytest.approx(80.0)  # 0.6*100 + 0.4*50
    assert blend(torch.tensor(50.0), torch.tensor(100.0), alpha).item() == pytest.approx(70.0)  # the other direction
    pseudo, label = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    assert blend(pseudo, label, alpha).tolist() == pytest.approx([0.4, 0.6])  # L1 = a L_pseudo + (1-a) L_lab
    assert blend(label, pseudo, alpha).tolist() == pytest.approx([0.6, 0.4])  # L2 = a L_lab + (1-a) L_pseudo


def test_largest_component_2d_and_3d():
    labels = np.array([[1, 1, 0, 1],
                       [0, 0, 0, 0],
                       [2, 0, 2, 2],
                       [0, 0, 2, 0]])
    assert largest_component_per_class(labels, 4).tolist() == [[1, 1, 0, 0],
                                                                [0, 0, 0, 0],
                                                                [0, 0, 2, 2],
                                                                [0, 0, 2, 0]]
    volume = np.zeros((4, 4, 4), int)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 2, 2] = 1  # diagonal neighbours: one 3D component
    volume[0, 3, 3] = 1  # isolated
    filtered = largest_component_per_class(volume, 2)
    assert filtered.sum() == 3 and filtered[0, 3, 3] == 0
    logits = torch.zeros(1, 3, 2, 4)
    logits[0, 1, 0, 0] = logits[0, 1, 0, 2] = logits[0, 1, 0, 3] = 5  # class 1: components of size 1 and 2
    one_hot = filtered_hard_pseudo_labels(logits)
    assert one_hot.shape == (1, 3, 2, 4) and torch.all(one_hot.sum(1) == 1)
    assert one_hot[0, 1].tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]] and one_hot[0, 2].sum() == 0


def test_similarity_alignment_value_and_matching():
    synthetic = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    distance, nearest = nearest_real_distances(synthetic, real)
    assert nearest.tolist() == [1, 1]
    assert distance.tolist() == pytest.approx([math.sqrt(9 + 9), 1.0])
    # normalised: [0.6, 0.8] vs [0, 1] and [0, 1] vs [0, 1]
    loss = similarity_alignment_loss(synthetic, real, nearest)
    assert loss.item() == pytest.approx((math.sqrt(0.36 + 0.04) + 0.0) / 2, abs=1e-6)


def test_similarity_alignment_gradient_reaches_segmentation_network():
    torch.manual_seed(0)
    network = PlainConvUNet(1, 3, (8, 16, 32), nn.Conv2d, 3, (1, 2, 2), 2, 2, (2, 2),
                            norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                            deep_supervision=True)
    x_real, x_synthetic = torch.randn(2, 1, 16, 16), torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        real = decoder_feature_statistics(network, x_real)
    synthetic = decoder_feature_statistics(network, x_synthetic)
    assert synthetic.shape == (3, 2 * 8)  # mean and std of the 8 channels of the last decoder stage
    loss = similarity_alignment_loss(synthetic, real, torch.tensor([0, 1, 0]))
    loss.backward()
    encoder_grads = [p.grad for p in network.encoder.parameters() if p.grad is not None]
    assert loss.item() > 0 and encoder_grads and sum(g.abs().sum() for g in encoder_grads) > 0


def test_patches_to_rgb_handles_grey_rgb_and_3d():
    grey = torch.randn(2, 1, 8, 8) * 5
    rgb = patches_to_rgb(grey)
    assert rgb.shape == (2, 3, 8, 8) and rgb.min() == 0 and rgb.max() == 1
    assert patches_to_rgb(torch.randn(2, 3, 4, 8, 8)).shape == (2, 3, 8, 8)  # central slice of 3D patches


def test_efficientnet_lite0_extractor_embeds_patches():
    extractor = load_efficientnet_lite0()
    features = extractor(torch.randn(2, 1, 32, 32))
    assert features.shape == (2, 1280) and not features.requires_grad
    extractor.train()
    assert not extractor.backbone.training  # stays frozen


def test_missing_dinov2_weights_give_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv(DINOV2_WEIGHTS_VARIABLE, str(tmp_path / "missing.safetensors"))
    with pytest.raises(UserError, match="nnUNetTrainerSRASeg_effnetSA"):
        load_feature_extractor("dinov2")
    monkeypatch.delenv(DINOV2_WEIGHTS_VARIABLE)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(UserError, match=DINOV2_WEIGHTS_VARIABLE):
        load_feature_extractor("dinov2")
    assert load_feature_extractor("auto").name == "efficientnet_lite0"  # documented fallback
    assert load_feature_extractor("none") is None


def test_dinov2_loads_from_a_local_weights_file(monkeypatch, tmp_path):
    import timm
    stand_in = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0)  # 518 px, random
    torch.save(stand_in.state_dict(), tmp_path / "dinov2.pth")
    monkeypatch.setenv(DINOV2_WEIGHTS_VARIABLE, str(tmp_path / "dinov2.pth"))
    extractor = load_feature_extractor("auto")
    assert extractor.name == "dinov2_vitb14"
    assert extractor(torch.randn(2, 1, 40, 40)).shape == (2, 768)  # positions resampled to 224 px


def test_sa_features_separate_visibly_different_images():
    """Regression: pooled bottleneck features (after InstanceNorm + LeakyReLU) gave a toy image and Gaussian noise a
    cosine of 0.9966, as close as two toy images. The decoder statistics must tell them apart clearly."""
    from nnunet_semi.toy_data import _ellipse_labels, _toy_image
    torch.manual_seed(0)
    network = PlainConvUNet(1, 5, (32, 64, 128, 256, 512), nn.Conv2d, 3, (1, 2, 2, 2, 2), 2, 3, (2, 2, 2, 2),
                            conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
                            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    rng = np.random.default_rng(0)

    def toy() -> torch.Tensor:
        image = _toy_image(_ellipse_labels((64, 64), rng), rng).astype(np.float32)
        return torch.from_numpy((image - image.mean()) / image.std())[None, None]

    with torch.no_grad():
        features = decoder_feature_statistics(network, torch.cat((toy(), toy(), torch.randn(1, 1, 64, 64))))
    features = torch.nn.functional.normalize(features, dim=1)
    toy_vs_toy, toy_vs_noise = (features[0] - features[1]).norm(), (features[0] - features[2]).norm()
    assert toy_vs_noise > 3 * toy_vs_toy


def _warmup_trainer(trainer_class: type) -> nnUNetTrainerSRASeg:
    """A trainer with only what ``warmup_losses`` reads: a 1x1 conv as network, nnU-Net's loss replaced by a
    recorder of its inputs (returns 0), no deep supervision."""
    trainer = object.__new__(trainer_class)
    trainer.network = nn.Conv2d(1, 3, 1)
    trainer.seen = []
    trainer.loss = lambda output, target: trainer.seen.append((output, target)) or output.sum() * 0
    trainer.soft_loss = SoftDiceCELoss()
    trainer.label_manager = type("LabelManager", (), {"num_segmentation_heads": 3})()
    return trainer


def test_warmup_mixes_labeled_pairs_unless_told_not_to():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    y = torch.randint(0, 3, (2, 1, 8, 8))
    plain = _warmup_trainer(nnUNetTrainerSRASeg_halfPlainWarmup)
    terms = plain.warmup_losses({"data": x, "target": y})
    (output, target), = plain.seen  # nnU-Net's loss, once, on the unmixed batch
    assert torch.equal(output, plain.network(x)) and target is y
    assert math.isnan(terms["loss_seg"]) and terms["loss"] == 0
    mixed = _warmup_trainer(type("Mixed", (nnUNetTrainerSRASeg,), {"blur_kernel_size": 1}))
    terms = mixed.warmup_losses({"data": x, "target": y})
    assert not mixed.seen and terms["loss_seg"] > 0  # soft Dice + CE on the mixed pair, nnU-Net's loss unused
