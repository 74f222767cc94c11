"""Unit tests of the shared SSL core: ramp-ups, EMA teacher, hyperparameters, unlabeled views, logger."""
from __future__ import annotations

import io
import json
import math

import pytest
import torch
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.logging.nnunet_logger import LocalLogger
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from PIL import Image
from torch import nn

from nnunet_semi.components.pseudo_labels import PseudoLabelDiceCELoss
from nnunet_semi.core.hyperparameters import ClassHyperparameters, budget_variant
from nnunet_semi.core.logging import SemiLocalLogger
from nnunet_semi.core.rampup import RAMPUPS, linear_rampup, sigmoid_rampup
from nnunet_semi.core.teacher import EMATeacher, unwrap_network
from nnunet_semi.core.time_limit import STOP_TRAINING_AT_VARIABLE, WallClockLimit, read_training_summary
from nnunet_semi.core.unlabeled import UnlabeledViews, is_unlabeled_case, split_geometric_and_photometric, split_views
from nnunet_semi.trainers import budget_variant_from_name, nnUNetTrainerMeanTeacher
from nnunet_semi.trainers.ema import nnUNetTrainerEMA
from nnunet_semi.trainers.mean_teacher import nnUNetTrainerMeanTeacher_labeledOnly
from nnunet_semi.trainers.unimatch import nnUNetTrainerUniMatch


# ---------------------------------------------------------------- ramp-ups
def test_sigmoid_rampup_hand_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0  # clipped after the ramp
    assert sigmoid_rampup(3, 0) == 1.0  # no ramp-up
    assert RAMPUPS["gaussian"] is sigmoid_rampup


def test_linear_rampup():
    assert [linear_rampup(s, 4) for s in (0, 1, 4, 9)] == [0.0, 0.25, 1.0, 1.0]


# ---------------------------------------------------------------- EMA teacher
def test_ema_update_matches_hand_computation():
    student = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        student.weight.fill_(1.0)
    teacher = EMATeacher(student, decay=0.99)
    with torch.no_grad():
        student.weight.fill_(3.0)
    teacher.update(student, update_index=1)  # warm-up decay min(1 - 1/2, 0.99) = 0.5
    assert teacher.module.weight.item() == pytest.approx(0.5 * 1.0 + 0.5 * 3.0)
    with torch.no_grad():
        student.weight.fill_(5.0)
    teacher.update(student, update_index=1000)  # decay 0.99
    assert teacher.module.weight.item() == pytest.approx(0.99 * 2.0 + 0.01 * 5.0)
    assert not any(p.requires_grad for p in teacher.module.parameters())


def test_ema_teacher_unwraps_compiled_student():
    student = nn.Linear(2, 2)
    compiled = torch.compile(student)
    assert unwrap_network(compiled) is student
    teacher = EMATeacher(compiled, decay=0.5)
    assert isinstance(teacher.module, nn.Linear)
    torch.testing.assert_close(teacher.module.weight, student.weight)


def test_mean_teacher_ema_decay_switches_when_the_consistency_rampup_ends():
    """``_ema999AfterRampup``: the teacher averages with 0.99 up to the end of the ramp-up (1/4 of 8 x 5 = 10 steps),
    with 0.999 after it; the default keeps 0.99 throughout."""
    from nnunet_semi.trainers.mean_teacher import nnUNetTrainerMeanTeacher_ema999AfterRampup

    def decays(trainer_class: type) -> list[float]:
        trainer = object.__new__(trainer_class)
        trainer.network, trainer.num_epochs, trainer.num_iterations_per_epoch = nn.Linear(1, 1), 8, 5
        trainer.teacher = EMATeacher(trainer.network, trainer.ema_decay)
        seen = []
        for trainer.global_step in (1, 10, 11, 40):
            trainer.after_optimizer_step()
            seen.append(trainer.teacher.decay)
        return seen

    assert decays(nnUNetTrainerMeanTeacher_ema999AfterRampup) == [0.99, 0.99, 0.999, 0.999]
    assert decays(nnUNetTrainerMeanTeacher) == [0.99] * 4


@pytest.mark.parametrize("variant, teacher_view_is_weak", [("", True), ("_weakTeacherView", True),
                                                            ("_noisyTeacherView", False), ("_ssl4mis", False)])
def test_mean_teacher_gives_the_weak_view_to_the_teacher_unless_a_variant_keeps_the_noisy_views(variant,
                                                                                                teacher_view_is_weak):
    """The core's unlabeled views come weak first; the default hands the teacher the first (geometry-only) view
    without noise, ``_noisyTeacherView`` the second (photometrically augmented) view plus its input noise."""
    from types import SimpleNamespace

    from nnunet_semi import trainers
    trainer = object.__new__(getattr(trainers, "nnUNetTrainerMeanTeacher" + variant))
    seen = {}

    def network(x):
        seen["student"] = x[2:]  # the labeled batch (2 samples) comes first
        return x.repeat(1, 2, 1, 1)

    def teacher(x):
        seen["teacher"] = x
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    trainer.network, trainer.teacher, trainer.loss = network, teacher, lambda outputs, target: outputs.mean()
    trainer.label_manager = SimpleNamespace(has_regions=False)
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.global_step = 1, 4, 4
    weak, strong = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 10.0)
    trainer.compute_train_losses({"data": torch.ones(2, 1, 4, 4), "target": None}, (weak, strong))
    if teacher_view_is_weak:
        assert torch.equal(seen["teacher"], weak) and torch.equal(seen["student"], strong)
    else:
        assert torch.equal(seen["student"], weak) and not torch.equal(seen["teacher"], strong)
        assert torch.allclose(seen["teacher"], strong, atol=2 * trainer.teacher_noise_std)


def _mean_teacher_on_two_crops(variant: str, logits, **stubs) -> dict[str, torch.Tensor]:
    """One ``compute_train_losses`` of Mean Teacher ``variant`` on two unlabeled crops of 2 x 2 voxels, crop 0 all 0
    and crop 1 all 1 in both views, with crop 0's CutMix box its first voxel (partner: crop 1). Student and teacher
    are both ``logits``; the hard-label loss is nnU-Net's Dice + CE (batch Dice, no DDP); ``stubs`` set further
    attributes of the trainer."""
    from types import SimpleNamespace

    from nnunet_semi import trainers
    from nnunet_semi.components.mixing import next_sample
    trainer = object.__new__(getattr(trainers, "nnUNetTrainerMeanTeacher" + variant))
    boxes = torch.zeros(2, 1, 2, 2)
    boxes[0, 0, 0, 0] = 1
    trainer.cutmix_boxes = lambda views: (boxes, next_sample(views.shape[0]))
    trainer.network, trainer.teacher, trainer.loss = logits, logits, lambda outputs, target: outputs.mean() * 0
    trainer.label_manager = SimpleNamespace(has_regions=False)
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.global_step = 1, 4, 4
    trainer.pseudo_label_loss = PseudoLabelDiceCELoss(batch_dice=True, ddp=False)
    trainer.running_class_thresholds = None
    for name, value in stubs.items():
        setattr(trainer, name, value)
    crops = torch.stack((torch.zeros(1, 2, 2), torch.ones(1, 2, 2)))
    return trainer.compute_train_losses({"data": torch.ones(1, 1, 2, 2), "target": None}, (crops, crops.clone()))


def test_mean_teacher_cutmix_mixes_the_student_view_and_the_teacher_targets_with_the_same_box():
    """``_cutMix``. Both networks give logits (log 3 * x, 0), so a voxel of value 1 has probabilities (0.75, 0.25)
    and one of value 0 (0.5, 0.5). In crop 0's box the student sees crop 1's value. Mixed targets agree with the
    student everywhere (loss 0); unmixed targets would differ there by 0.25 per class, 2 * 0.0625 / 16 = 0.0078125."""
    seen = {}

    def logits(x):
        return torch.cat((x * math.log(3), torch.zeros_like(x)), 1)

    def network(x):
        seen["student"] = x[1:]  # the labeled sample comes first
        return logits(x)

    losses = _mean_teacher_on_two_crops("_cutMix", logits, network=network)
    assert seen["student"][:, 0].tolist() == [[[1, 0], [0, 0]], [[1, 1], [1, 1]]]
    assert losses["loss_consistency"].item() == pytest.approx(0.0, abs=1e-7)


def test_mean_teacher_hard_pseudo_labels_are_the_teachers_mixed_argmax():
    """``_cutMixPseudoLabels``, logits (log 3 * x, log 3 * (1 - x)): a voxel of value 1 is class 0 and one of value 0
    class 1, each at probability 3/4. Crop 0 (zeros, class 1) gets crop 1's class 0 in its box, so the pseudo-labels
    are [[0, 1], [1, 1]] and all 0, every voxel kept. The student sees the same mix, so it gives each pseudo-label
    3/4: CE log(4/3) per voxel; batch Dice of class 1, 3 labeled voxels at 3/4 and 5 others at 1/4:
    2 * 9/4 / (3 + 3 * 3/4 + 5 * 1/4) = 9/13; loss -9/13 + log(4/3)."""
    seen = {}

    def logits(x):
        return torch.cat((x * math.log(3), (1 - x) * math.log(3)), 1)

    def pseudo_label_loss(student_logits, labels, confident):
        seen["labels"] = labels
        return PseudoLabelDiceCELoss(batch_dice=True, ddp=False)(student_logits, labels, confident)

    losses = _mean_teacher_on_two_crops("_cutMixPseudoLabels", logits, pseudo_label_loss=pseudo_label_loss)
    assert seen["labels"][:, 0].tolist() == [[[0, 1], [1, 1]], [[0, 0], [0, 0]]]
    assert losses["confident_fraction"].item() == 1.0
    assert losses["loss_consistency"].item() == pytest.approx(-9 / 13 + math.log(4 / 3), abs=1e-4)


def test_mean_teacher_confident_pseudo_labels_leave_unsure_voxels_out():
    """``_cutMixConfidentPseudoLabels`` (threshold 0.95), logits (log 24 * x, log 3 * (1 - x)): a voxel of value 1 is
    class 0 at 24/25 = 0.96 (kept), one of value 0 class 1 at 3/4 (left out). Mixed as above, 5 of the 8 voxels are
    kept, all class 0: CE 5 * log(25/24) / 8 (the mean over every voxel); the foreground Dice sees no class-1 label
    and a predicted 5 * 0.04 = 0.2 over the kept voxels, smooth / (0.2 + smooth) = 5e-5; loss 5/8 log(25/24) - 5e-5."""

    def logits(x):
        return torch.cat((x * math.log(24), (1 - x) * math.log(3)), 1)

    losses = _mean_teacher_on_two_crops("_cutMixConfidentPseudoLabels", logits)
    assert losses["confident_fraction"].item() == 5 / 8
    assert losses["loss_consistency"].item() == pytest.approx(5 / 8 * math.log(25 / 24) - 5e-5, abs=1e-5)


def test_mean_teacher_class_balanced_pseudo_labels_keep_each_class_share():
    """``_cutMixClassBalancedPseudoLabels`` (keep 0.5), on the same teacher as the fixed-threshold test above: the
    5 class-0 voxels (0.96) and the 3 class-1 voxels (3/4) each tie at their class threshold, so all 8 are kept
    where 0.95 kept only the 5 class-0 ones. CE (5 log(25/24) + 3 log(4/3)) / 8; batch Dice of class 1, 3 labeled
    voxels at 3/4 and 5 others at 1/25: 2 * 9/4 / (3 + 9/4 + 1/5) = 90/109; loss CE - 90/109."""

    def logits(x):
        return torch.cat((x * math.log(24), (1 - x) * math.log(3)), 1)

    losses = _mean_teacher_on_two_crops("_cutMixClassBalancedPseudoLabels", logits)
    assert losses["confident_fraction"].item() == 1.0
    cross_entropy = (5 * math.log(25 / 24) + 3 * math.log(4 / 3)) / 8
    assert losses["loss_consistency"].item() == pytest.approx(cross_entropy - 90 / 109, abs=1e-4)


@pytest.mark.parametrize("variant, cap, momentum", [
    ("_cutMixClassBalancedPseudoLabels", None, None),
    ("_cutMixClassBalancedOrConfidentPseudoLabels", 0.95, None),
    ("_cutMixClassBalancedOrConfidentPseudoLabels_runningThresholds", 0.95, 0.99)])
def test_mean_teacher_class_balanced_thresholds_are_capped_and_running_as_set(monkeypatch, variant, cap, momentum):
    """The trainer hands its ``consistency_confidence_threshold`` (0: none) to the class-balanced rule as the cap,
    and with a ``class_balanced_momentum`` its running estimate, which the step updates."""
    from nnunet_semi.components import pseudo_labels
    from nnunet_semi.trainers import mean_teacher
    calls = []

    def recording(probabilities, keep_fraction, sure_threshold=None, running=None):
        calls.append((keep_fraction, sure_threshold, running and running.momentum))
        return pseudo_labels.class_balanced_pseudo_labels(probabilities, keep_fraction, sure_threshold, running)

    monkeypatch.setattr(mean_teacher, "class_balanced_pseudo_labels", recording)
    running = momentum and pseudo_labels.RunningClassThresholds(momentum)
    _mean_teacher_on_two_crops(variant, lambda x: torch.cat((x * math.log(24), (1 - x) * math.log(3)), 1),
                               running_class_thresholds=running)
    assert calls == [(0.5, cap, momentum)]
    if running:
        assert running.values.tolist() == pytest.approx([24 / 25, 3 / 4])


def test_mean_teacher_running_class_thresholds_are_saved_and_resumed(monkeypatch):
    """``_runningThresholds`` keeps its estimate in ``semi_state`` (so ``--c`` resumes it), the other variants
    save none."""
    from nnunet_semi.components.pseudo_labels import RunningClassThresholds
    from nnunet_semi.core.trainer import nnUNetTrainerSemi
    from nnunet_semi.trainers import mean_teacher

    def trainer_with(variant: str, running) -> mean_teacher.nnUNetTrainerMeanTeacher:
        trainer = object.__new__(getattr(mean_teacher, "nnUNetTrainerMeanTeacher" + variant))
        trainer.running_class_thresholds = running
        return trainer

    monkeypatch.setattr(nnUNetTrainerSemi, "semi_state_dict", lambda self: {"global_step": 7})
    monkeypatch.setattr(nnUNetTrainerSemi, "load_semi_state_dict", lambda self, state: None)
    saved = RunningClassThresholds(0.99)
    saved.update(torch.tensor([0.9, 0.7]))
    running = "_cutMixClassBalancedOrConfidentPseudoLabels_runningThresholds"
    checkpoint = io.BytesIO()
    torch.save({"semi_state": trainer_with(running, saved).semi_state_dict()}, checkpoint)
    checkpoint.seek(0)
    resumed = trainer_with(running, RunningClassThresholds(0.99))
    resumed.load_semi_state_dict(torch.load(checkpoint, weights_only=False)["semi_state"])
    assert resumed.running_class_thresholds.values.tolist() == pytest.approx([0.9, 0.7])
    assert trainer_with("_cutMixClassBalancedOrConfidentPseudoLabels", None).semi_state_dict() == {"global_step": 7}


def test_confidence_masked_mse_counts_unconfident_voxels_as_zero():
    """Two voxels, two classes: the teacher is sure of the first (0.96) and not of the second (0.6). Squared
    differences (0.96 - 0.5)^2 = 0.2116 twice at the first voxel, (0.6 - 0.2)^2 = 0.16 twice at the second; mean over
    the 4 entries: plain MSE (0.4232 + 0.32) / 4 = 0.1858, masked at 0.95 0.4232 / 4 = 0.1058, half the voxels kept."""
    from nnunet_semi.trainers.mean_teacher import confidence_masked_mse
    teacher = torch.tensor([[[0.96, 0.6], [0.04, 0.4]]])  # (B=1, C=2, 2 voxels)
    student = torch.tensor([[[0.5, 0.2], [0.5, 0.8]]])
    plain, kept_all = confidence_masked_mse(student, teacher, 0.0, has_regions=False)
    assert plain.item() == pytest.approx(0.1858) and kept_all.item() == 1.0
    assert plain.item() == pytest.approx(torch.nn.functional.mse_loss(student, teacher).item())
    masked, kept = confidence_masked_mse(student, teacher, 0.95, has_regions=False)
    assert masked.item() == pytest.approx(0.1058) and kept.item() == 0.5
    regions, _ = confidence_masked_mse(student, teacher, 0.95, has_regions=True)  # least sure region: 0.96 | 0.6
    assert regions.item() == pytest.approx(0.1058)


# ---------------------------------------------------------------- hyperparameters
class _Recorder(nnUNetTrainer):
    """Stands in for nnUNetTrainer.__init__: sets nnU-Net's defaults as instance attributes."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        self.num_epochs = 1000
        self.num_iterations_per_epoch = 250
        self.num_val_iterations_per_epoch = 50
        self.initial_lr = 1e-2


def test_class_attributes_override_nnunet_defaults():
    class Short(ClassHyperparameters, _Recorder):
        num_epochs = 7
    trainer = Short({}, "2d", 0, {})
    assert trainer.num_epochs == 7 and trainer.num_iterations_per_epoch == 250 and trainer.initial_lr == 1e-2


def test_budget_variant_of_vanilla_and_semi_trainers():
    variant = budget_variant(_Recorder, 3, 20)
    trainer = variant({}, "2d", 0, {})
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 20, 4)
    assert trainer.save_every == 1  # checkpoint_latest every epoch: --c resumes short runs where they stopped
    assert variant.__name__ == "_Recorder_3epochs_20its" and budget_variant(_Recorder, 3, 20) is variant
    mt = budget_variant_from_name("nnUNetTrainerMeanTeacher_2epochs_5its")
    assert issubclass(mt, nnUNetTrainerMeanTeacher) and mt.num_epochs == 2 and mt.num_iterations_per_epoch == 5
    assert budget_variant_from_name("nnUNetTrainerMeanTeacher_4epochs").num_epochs == 4
    with pytest.raises(AttributeError):
        budget_variant_from_name("nnUNetTrainerMeanTeacher")


def test_mean_teacher_defaults_and_the_settings_measured_variants_keep():
    """Weight 1, the EMA teacher exported and weak-to-strong views by default; SCDL keeps the SSL4MIS setting it was
    measured with, and the benchmark tables' trainer names keep theirs, the noisy views included (SCDL's
    ``_exportTeacher_consistency1`` has that Mean Teacher variant's, ``_meanTeacherDefaults`` the defaults)."""
    from nnunet_semi.trainers import (nnUNetTrainerMeanTeacher_ema999AfterRampup,
                                      nnUNetTrainerMeanTeacher_exportTeacher,
                                      nnUNetTrainerMeanTeacher_exportTeacher_consistency1,
                                      nnUNetTrainerMeanTeacher_exportTeacher_consistency1_halfUnlabeled,
                                      nnUNetTrainerMeanTeacher_exportTeacher_consistency3,
                                      nnUNetTrainerMeanTeacher_weakTeacherView,
                                      nnUNetTrainerMeanTeacher_ssl4mis, nnUNetTrainerSCDL,
                                      nnUNetTrainerSCDL_exportTeacher_consistency1,
                                      nnUNetTrainerSCDL_meanTeacherDefaults)

    def setting(trainer_class: type) -> tuple[float, str, int, float]:
        return (trainer_class.consistency_weight, trainer_class.exported_network, trainer_class.unlabeled_weak_views,
                trainer_class.teacher_noise_std)

    assert setting(nnUNetTrainerMeanTeacher) == setting(nnUNetTrainerMeanTeacher_weakTeacherView)
    assert setting(nnUNetTrainerMeanTeacher) == (1.0, "teacher", 1, 0.0)
    assert setting(nnUNetTrainerSCDL_meanTeacherDefaults) == setting(nnUNetTrainerMeanTeacher)
    assert nnUNetTrainerMeanTeacher.consistency_confidence_threshold == 0.0  # every voxel
    assert nnUNetTrainerMeanTeacher.cutmix_probability == 0.0  # no mixing
    assert setting(nnUNetTrainerMeanTeacher_exportTeacher_consistency1) == (1.0, "teacher", 0, 0.1)
    assert setting(nnUNetTrainerSCDL_exportTeacher_consistency1) == (1.0, "teacher", 0, 0.1)
    assert setting(nnUNetTrainerMeanTeacher_ssl4mis) == setting(nnUNetTrainerSCDL) == (0.1, "student", 0, 0.1)
    assert setting(nnUNetTrainerMeanTeacher_exportTeacher) == (0.1, "teacher", 0, 0.1)
    for measured in (nnUNetTrainerMeanTeacher_exportTeacher_consistency1_halfUnlabeled,
                     nnUNetTrainerMeanTeacher_exportTeacher_consistency3, nnUNetTrainerMeanTeacher_ema999AfterRampup):
        assert setting(measured)[2:] == (0, 0.1), measured.__name__


@pytest.mark.parametrize("trainer_class", [nnUNetTrainerMeanTeacher, nnUNetTrainerMeanTeacher_labeledOnly,
                                           nnUNetTrainerUniMatch, nnUNetTrainerEMA])
def test_steps_without_unlabeled_views_are_supervised_only(trainer_class):
    """Before ``unlabeled_start_step``, or in a variant without unlabeled batches, the core passes no views."""
    trainer = object.__new__(trainer_class)
    torch.manual_seed(0)
    trainer.network = nn.Conv2d(1, 2, 1)
    trainer.loss = lambda logits, target: (logits - target).abs().mean()  # stands in for nnU-Net's loss
    labeled = {"data": torch.randn(2, 1, 4, 4), "target": torch.ones(2, 2, 4, 4)}
    terms = trainer.compute_train_losses(labeled, ())
    expected = (trainer.network(labeled["data"]) - 1).abs().mean()
    assert terms["loss"].item() == terms["loss_supervised"].item() == pytest.approx(expected.item())
    assert set(terms) == {"loss", "loss_supervised", *trainer_class.train_terms}
    assert all(math.isnan(terms[t]) for t in trainer_class.train_terms if t != "loss_supervised")


# ---------------------------------------------------------------- unlabeled data
def test_is_unlabeled_case_reads_annotated_locations():
    assert is_unlabeled_case({"class_locations": {1: [], 2: [], (-1, 0, 1, 2): []}})
    assert not is_unlabeled_case({"class_locations": {1: [], 2: [], (-1, 0, 1, 2): [[0, 0, 1, 1]]}})
    assert not is_unlabeled_case({"class_locations": {1: [[0, 0, 1, 1]]}})  # no ignore label at all


def test_unlabeled_views_share_geometry_and_differ_in_appearance():
    torch.manual_seed(0)
    pipeline = ComposeTransforms([
        MirrorTransform(allowed_axes=(0, 1)),
        RandomTransform(GaussianNoiseTransform(noise_variance=(0.5, 0.5)), apply_probability=1.0),
        DownsampleSegForDSTransform(ds_scales=[[1, 1], [0.5, 0.5]]),
    ])
    geometric, photometric = split_geometric_and_photometric(pipeline)
    assert [type(t).__name__ for t in geometric] == ["MirrorTransform"]
    assert [type(t).__name__ for t in photometric] == ["RandomTransform"]

    image = 100 * torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)  # pixels 100 apart, noise std ~0.7
    views = UnlabeledViews(pipeline, num_views=2)
    mirrored_somewhere = False
    for _ in range(8):
        out = views(image=image.clone(), segmentation=torch.zeros(1, 4, 4))
        assert out["image"].shape == (2, 4, 4) and out["segmentation"].shape == (1, 4, 4)  # no DS list
        view_a, view_b = split_views(out["image"][None], 2)
        assert not torch.equal(view_a, view_b)  # independent noise
        source_a = torch.round(view_a.flatten() / 100)  # which original pixel landed here
        source_b = torch.round(view_b.flatten() / 100)
        assert torch.equal(source_a, source_b)  # one shared mirroring
        mirrored_somewhere |= not torch.equal(source_a, torch.arange(16.0))
    assert mirrored_somewhere


# ---------------------------------------------------------------- logger
def test_semi_logger_logs_terms_and_appends_panel(tmp_path):
    logger = SemiLocalLogger(LocalLogger(), ("loss_consistency",))
    for epoch in range(2):
        for key, value in (("mean_fg_dice", 0.5), ("ema_fg_dice", 0.5), ("dice_per_class_or_region", [0.5]),
                           ("train_losses", 1.0), ("val_losses", 1.0), ("lrs", 0.01),
                           ("epoch_start_timestamps", 0.0), ("epoch_end_timestamps", 1.0),
                           ("loss_consistency", 0.1 * epoch)):
            logger.log(key, value, epoch)
    logger.plot_progress_png(str(tmp_path))
    with Image.open(tmp_path / "progress.png") as png:
        width, height = png.size
    assert width == 3000 and height > 5400  # nnU-Net's 30x54 inch figure at 100 dpi plus our panel
    restored = SemiLocalLogger(LocalLogger(), ("loss_consistency", "new_term"))
    restored.load_checkpoint(logger.get_checkpoint())
    assert restored.get_value("loss_consistency", None) == [0.0, 0.1]
    assert [math.isnan(v) for v in restored.get_value("new_term", None)] == [True, True]  # added since: NaN
    restored.log("new_term", 0.3, 2)
    assert restored.get_value("new_term", None)[2] == 0.3  # the resumed epoch's value sits at its epoch


class _Loop:
    """nnU-Net's training loop in miniature (run_training, epoch hooks, on_train_end)."""

    def __init__(self, folder):
        self.num_epochs, self.current_epoch, self.num_iterations_per_epoch = 5, 0, 2
        self.is_ddp, self.local_rank, self.device, self.output_folder = False, 0, torch.device("cpu"), str(folder)
        self.ended = 0

    def print_to_log_file(self, *args):
        pass

    def on_train_start(self):
        pass

    def on_epoch_end(self):
        self.current_epoch += 1

    def on_train_end(self):
        self.ended += 1

    def run_training(self):
        self.on_train_start()
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_end()
        self.on_train_end()


class _LimitedLoop(WallClockLimit, _Loop):
    pass


@pytest.mark.parametrize("deadline, epochs, stopped", [(None, 5, False), ("1", 1, True), ("9e12", 5, False)])
def test_wall_clock_limit_stops_after_the_epoch_past_the_deadline(tmp_path, monkeypatch, deadline, epochs, stopped):
    if deadline is None:
        monkeypatch.delenv(STOP_TRAINING_AT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(STOP_TRAINING_AT_VARIABLE, deadline)
    trainer = _LimitedLoop(tmp_path)
    trainer.run_training()
    assert trainer.current_epoch == epochs and trainer.ended == 1  # on_train_end once: final checkpoint, cleanup
    summary = read_training_summary(tmp_path)
    assert (summary["epochs_trained"], summary["epochs_planned"], summary["stopped_at_time_limit"]) == \
        (epochs, 5, stopped)


def test_wall_clock_limit_rejects_a_deadline_that_is_no_time(tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_TRAINING_AT_VARIABLE, "tomorrow")
    with pytest.raises(ValueError, match=STOP_TRAINING_AT_VARIABLE):
        _LimitedLoop(tmp_path).run_training()


def test_budget_variant_of_a_budget_variant_keeps_one_time_limit():
    twice = budget_variant(budget_variant(nnUNetTrainerMeanTeacher, 5), 2, 2)
    assert twice.__mro__.count(WallClockLimit) == 1 and twice.num_epochs == 2


def test_continuing_a_stopped_training_makes_its_final_checkpoint_the_latest(tmp_path, monkeypatch):
    """--c after a stop: a kill during the continuation must resume from the continuation, not from the stop."""
    monkeypatch.setenv(STOP_TRAINING_AT_VARIABLE, "1")
    stopped = _LimitedLoop(tmp_path)
    stopped.run_training()
    (tmp_path / "checkpoint_final.pth").write_text("epoch 1")
    summary = tmp_path / "training_summary.json"
    summary.write_text(json.dumps({**read_training_summary(tmp_path), "peak_main_process_rss_mib": 1e9}))
    monkeypatch.delenv(STOP_TRAINING_AT_VARIABLE)
    continued = _LimitedLoop(tmp_path)
    continued.current_epoch = stopped.current_epoch  # what nnU-Net's --c loads
    continued.run_training()
    assert (tmp_path / "checkpoint_latest.pth").read_text() == "epoch 1"
    assert not (tmp_path / "checkpoint_final.pth").exists()  # the fake loop's on_train_end writes none
    assert read_training_summary(tmp_path)["stopped_at_time_limit"] is False and continued.current_epoch == 5
    assert read_training_summary(tmp_path)["peak_main_process_rss_mib"] == 1e9  # the peak before the continuation
    _LimitedLoop(tmp_path).run_training()  # a training from scratch in the same folder keeps only its own peak
    assert read_training_summary(tmp_path)["peak_main_process_rss_mib"] < 1e9
