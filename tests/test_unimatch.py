"""UniMatch: its pseudo-label loss against hand values, CutMix boxes, the weak view, the feature-perturbation stream
(also under DDP), and a 2d training through stock nnUNetv2_train / nnUNetv2_predict."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from torch.nn.parallel import DistributedDataParallel

from e2e_support import assert_terms_logged
from nnunet_semi.components.mixing import cutmix_box_mask, next_sample, paste
from nnunet_semi.components.pseudo_labels import (PseudoLabelDiceCELoss, RunningClassThresholds,
                                                  class_balanced_pseudo_labels, confident_pseudo_labels,
                                                  masked_cross_entropy)
from nnunet_semi.core.unlabeled import UnlabeledViews, split_views
from nnunet_semi.trainers.unimatch import (FeaturePerturbedNetwork, nnUNetTrainerUniMatch,
                                           nnUNetTrainerUniMatch_noFP)
from test_ddp import _tiny_unet, gradients_are_rank_averages


def test_masked_cross_entropy_hand_value():
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3), 0.0]]])[None]  # (1, 2 classes, 1, 2): p(1) = 3/4, 1/2
    labels = torch.tensor([[[[1, 0]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    # voxel 0: -log(3/4), voxel 1 masked out; mean over both voxels
    assert masked_cross_entropy(logits, labels, mask).item() == pytest.approx(math.log(4 / 3) / 2)


def test_pseudo_label_dice_ce_hand_value():
    """Voxel 0 labeled 1 with p(1) = 3/4 and confident, voxel 1 masked out. Dice of class 1 over the confident voxel:
    2 * 3/4 / (3/4 + 1) = 6/7 (the loss is its negative, nnU-Net's sign); CE as above."""
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3), 0.0]]])[None]
    labels, mask = torch.tensor([[[[1, 0]]]]), torch.tensor([[[[1.0, 0.0]]]])
    loss = PseudoLabelDiceCELoss(batch_dice=True, ddp=False)(logits, labels, mask)
    assert loss.item() == pytest.approx(-6 / 7 + math.log(4 / 3) / 2, abs=1e-4)


def test_confident_pseudo_labels():
    probabilities = torch.tensor([[[0.01, 0.5]], [[0.99, 0.5]]])[None]  # voxel 0: p(1) = 0.99; voxel 1: a tie
    labels, confident = confident_pseudo_labels(probabilities.requires_grad_(), 0.95)
    assert labels.tolist() == [[[[1, 0]]]] and confident.tolist() == [[[[1.0, 0.0]]]]
    assert not labels.requires_grad and not confident.requires_grad


def test_class_balanced_pseudo_labels_keep_the_same_share_of_every_class():
    """Six voxels, p(class 0) = 0.99, 0.9, 0.8, 0.7, 0.05, 0.4: four class-0 voxels (confidence 0.99 ... 0.7) and two
    class-1 ones (0.95, 0.6). Keeping half of each class: 0.99 and 0.9 of class 0, 0.95 of class 1 (a fixed 0.95
    keeps one of four class-0 voxels); keeping 0.6: ceil(2.4) = 3 and ceil(1.2) = 2."""
    background = torch.tensor([0.99, 0.9, 0.8, 0.7, 0.05, 0.4])
    probabilities = torch.stack((background, 1 - background))[None, :, None]  # (B=1, C=2, 1, 6)
    labels, half = class_balanced_pseudo_labels(probabilities.requires_grad_(), 0.5)
    assert labels.flatten().tolist() == [0, 0, 0, 0, 1, 1] and not half.requires_grad
    assert half.flatten().tolist() == [1, 1, 0, 0, 1, 0]
    assert class_balanced_pseudo_labels(probabilities, 0.6)[1].flatten().tolist() == [1, 1, 1, 0, 1, 1]
    assert class_balanced_pseudo_labels(probabilities, 1.0)[1].flatten().tolist() == [1] * 6


def test_class_balanced_pseudo_labels_keep_sure_voxels_beyond_their_class_share():
    """The six voxels above, keeping half of each class, thresholds capped at 0.75: class 0's threshold drops from
    0.9 to 0.75, so 0.8 is kept too (0.7 is not); class 1's, 0.95, drops to 0.75: 0.6 stays out."""
    background = torch.tensor([0.99, 0.9, 0.8, 0.7, 0.05, 0.4])
    probabilities = torch.stack((background, 1 - background))[None, :, None]
    assert class_balanced_pseudo_labels(probabilities, 0.5, 0.75)[1].flatten().tolist() == [1, 1, 1, 0, 1, 0]
    assert class_balanced_pseudo_labels(probabilities, 0.5, 0.99)[1].flatten().tolist() == [1, 1, 0, 0, 1, 0]


def test_running_class_thresholds_hand_values():
    """Momentum 0.5: a class first seen starts at its batch value, one seen before and now moves halfway, one absent
    from the batch keeps its value; NaN (never seen) stays NaN."""
    nan = float("nan")
    running = RunningClassThresholds(0.5)
    assert torch.equal(running.update(torch.tensor([0.9, nan, 0.5, nan])).isnan(),
                       torch.tensor([False, True, False, True]))
    after = running.update(torch.tensor([0.7, 0.8, nan, nan]))
    assert after[:3].tolist() == pytest.approx([0.8, 0.8, 0.5]) and after[3].isnan()
    with pytest.raises(ValueError, match="momentum"):
        RunningClassThresholds(1.0)


def test_class_balanced_pseudo_labels_with_running_thresholds_leave_a_batchs_unsure_class_out():
    """Batch 1 is the six voxels above (thresholds: class 0 0.9, class 1 0.95). Batch 2 has class 0 at 0.99 and 0.9
    and two unsure class-1 voxels, 0.55 and 0.6: its own thresholds, 0.99 and 0.6, would keep the 0.6 voxel. With
    momentum 0.5 the thresholds are 0.945 and 0.775: 0.99 kept, 0.9 not, neither class-1 voxel."""
    first = torch.tensor([0.99, 0.9, 0.8, 0.7, 0.05, 0.4])
    second = torch.tensor([0.99, 0.9, 0.45, 0.4])
    batches = [torch.stack((b, 1 - b))[None, :, None] for b in (first, second)]
    running = RunningClassThresholds(0.5)
    assert class_balanced_pseudo_labels(batches[0], 0.5, running=running)[1].flatten().tolist() == [1, 1, 0, 0, 1, 0]
    assert class_balanced_pseudo_labels(batches[1], 0.5)[1].flatten().tolist() == [1, 0, 0, 1]
    assert class_balanced_pseudo_labels(batches[1], 0.5, running=running)[1].flatten().tolist() == [1, 0, 0, 0]
    assert running.values.tolist() == pytest.approx([0.945, 0.775])


@pytest.mark.parametrize("shape", [(32, 48), (16, 20, 24)])
def test_cutmix_boxes(shape):
    generator = torch.Generator().manual_seed(0)
    assert cutmix_box_mask(3, shape, probability=0.0, generator=generator).sum() == 0
    masks = cutmix_box_mask(64, shape, probability=1.0, generator=generator)
    assert masks.shape == (64, 1, *shape)
    for mask in masks[:, 0]:
        where = mask.nonzero()
        extent = where.max(0).values - where.min(0).values + 1
        assert mask.sum() == extent.prod()  # one solid box
        assert 0.01 <= float(mask.mean()) <= 0.45  # volume fraction in [0.02, 0.4] up to rounding of the sides
    half = cutmix_box_mask(400, shape, probability=0.5, generator=generator)
    assert 0.4 < float((half.flatten(1).sum(1) > 0).float().mean()) < 0.6


def test_paste_takes_the_partner_inside_the_box():
    x = torch.arange(2.0)[:, None, None, None].expand(2, 1, 2, 2)
    box = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    partner = next_sample(2)
    assert partner.tolist() == [1, 0] and next_sample(3).tolist() == [1, 2, 0]
    assert paste(x, box, partner)[:, 0].tolist() == [[[1, 0], [0, 0]], [[1, 1], [1, 0]]]


def test_weak_view_has_geometry_only():
    torch.manual_seed(0)
    pipeline = ComposeTransforms([MirrorTransform(allowed_axes=(0, 1)),
                                  RandomTransform(GaussianNoiseTransform(noise_variance=(0.5, 0.5)), 1.0)])
    image = 100 * torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    out = UnlabeledViews(pipeline, num_views=3, weak_views=1)(image=image.clone(), segmentation=torch.zeros(1, 4, 4))
    weak, strong_1, strong_2 = split_views(out["image"][None], 3)
    assert torch.equal(torch.sort(weak.flatten()).values, image.flatten())  # only moved, values untouched
    assert not torch.equal(strong_1, strong_2) and not torch.equal(weak, strong_1)
    assert torch.equal(torch.round(strong_1 / 100), weak / 100)  # same geometry as the weak view
    with pytest.raises(ValueError, match="weak_views"):
        UnlabeledViews(pipeline, num_views=2, weak_views=3)


def _perturbed_unet() -> FeaturePerturbedNetwork:
    return FeaturePerturbedNetwork(_tiny_unet())


def test_feature_perturbation_appends_dropped_copies_of_the_chosen_samples():
    torch.manual_seed(0)
    network = _perturbed_unet().eval()
    x = torch.randn(3, 1, 8, 8)
    plain = network(x)
    assert torch.equal(plain, network.planned(x))  # without the argument: the planned network
    out = network(x, perturbed=(1, 3), dropout=0.0)  # no dropout: the copies decode to the same logits
    assert out.shape == (5, 3, 8, 8) and torch.allclose(out[3:], out[1:3], atol=1e-6)
    assert torch.allclose(out[:3], plain, atol=1e-6)
    dropped = network(x, perturbed=(1, 3), dropout=0.5)
    assert not torch.allclose(dropped[3:], out[1:3])


def _fp_gradient_worker(rank: int, world_size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    network, reference = _perturbed_unet(), _perturbed_unet()
    reference.load_state_dict(network.state_dict())
    ddp = DistributedDataParallel(network)
    torch.manual_seed(10 + rank)
    x = torch.randn(4, 1, 8, 8)

    def loss(model):
        torch.manual_seed(50 + rank)  # the same dropout masks in both passes
        return model(x, perturbed=(2, 4), dropout=0.5).square().mean()

    loss(ddp).backward()
    loss(reference).backward()  # this rank's own gradient, no DDP
    results[rank] = gradients_are_rank_averages(network, reference, world_size)
    dist.destroy_process_group()


def test_feature_perturbation_under_ddp_gets_averaged_gradients(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_fp_gradient_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] and results[1]


def test_warmup_is_a_budget_fraction():
    trainer = object.__new__(nnUNetTrainerUniMatch)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 8, 50
    assert trainer.unlabeled_start_step == 100  # 25 % of 400 iterations
    trainer.num_epochs, trainer.num_iterations_per_epoch = 1000, 250
    assert trainer.unlabeled_start_step == 62500  # and of nnU-Net's default budget


@pytest.mark.parametrize("trainer_class, decoded", [(nnUNetTrainerUniMatch, 2 + 3 * 2 + 2),
                                                     (nnUNetTrainerUniMatch_noFP, 2 + 3 * 2)])
def test_feature_perturbed_pass_runs_only_when_weighted(trainer_class, decoded):
    from types import SimpleNamespace
    torch.manual_seed(0)
    trainer = object.__new__(trainer_class)
    network = FeaturePerturbedNetwork(_tiny_unet())
    batch_sizes = []
    trainer.network = lambda x, **kwargs: batch_sizes.append(len(out := network(x, **kwargs))) or out
    trainer.loss = lambda logits, target: torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    trainer.unlabeled_loss = PseudoLabelDiceCELoss(batch_dice=True, ddp=False)
    trainer.label_manager = SimpleNamespace(has_regions=False)
    labeled = {"data": torch.randn(2, 1, 8, 8), "target": torch.randint(0, 2, (2, 1, 8, 8))}
    terms = trainer.compute_train_losses(labeled, tuple(torch.randn(2, 1, 8, 8) for _ in range(3)))
    assert batch_sizes == [decoded]  # labeled + weak, two strong (+ the perturbed weak) in one pass
    assert torch.isfinite(terms["loss"]) and (terms["loss_fp"] != 0) == (trainer.fp_weight > 0)


@pytest.mark.e2e
def test_2d_unimatch_trains_and_predicts(toy_2d):
    trainer, dataset = "nnUNetTrainerUniMatch_2epochs_3its", "Dataset502_ToySemi6"
    toy_2d.train(502, "2d", trainer)
    final = toy_2d.checkpoint(dataset, trainer, "2d")
    assert final["semi_state"]["global_step"] == 6 and "teacher" not in final["semi_state"]  # 2 warm-up steps
    assert_terms_logged(final, ("loss_supervised", "loss_strong", "loss_fp", "confident_fraction"), 2)
    logging = final["logging"]
    assert all(0 <= v <= 1 for v in logging["confident_fraction"])
    assert all(np.isfinite(logging[t]).all() for t in ("loss_strong", "loss_fp"))
    log = max(toy_2d.fold_dir(dataset, trainer, "2d").glob("training_log_*.txt")).read_text()
    assert "views per crop 3 (1 without photometric augmentation)" in log
    images, predictions = toy_2d.predict_test_set(dataset, 502, "2d", trainer)
    assert len(list(predictions.glob("*.png"))) == len(list(images.glob("*.png")))
