"""Unit tests of the core's extension points: frozen parts, the EMA teacher around them, per-module learning rates,
hyperparameter validation at construction, NaN-aware logging, trainer discovery, the use_mask_for_norm refusal."""
from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnunet_semi.core.frozen import FrozenPart, frozen_parts, keep_frozen_parts_out_of_ddp, trainable_parameters
from nnunet_semi.core.teacher import EMATeacher
from nnunet_semi.core.trainer import ScaledPolyLRScheduler, mean_over_workers, nnUNetTrainerSemi
from nnunet_semi.errors import UserError
from nnunet_semi.trainers import (
    TRAINERS,
    nnUNetTrainerCPS,
    nnUNetTrainerEMA,
    nnUNetTrainerMeanTeacher,
    nnUNetTrainerSCDL,
    nnUNetTrainerSCDL_CPS,
    nnUNetTrainerSRASeg,
    nnUNetTrainerSSGNet,
    nnUNetTrainerUniMatch,
)


class _WithFrozenBranch(nn.Module):
    def __init__(self, in_checkpoint: bool):
        super().__init__()
        self.head = nn.Linear(3, 2)
        self.branch = FrozenPart(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)),
                                 source="test", in_checkpoint=in_checkpoint)

    def forward(self, x):
        return self.head(self.branch(x))


def test_frozen_part_out_of_gradients_optimiser_and_checkpoint():
    model = _WithFrozenBranch(in_checkpoint=False)
    assert set(model.state_dict()) == {"head.weight", "head.bias"}  # reproducible from its source: not stored
    assert [p.shape for p in trainable_parameters(model)] == [(2, 3), (2,)]
    model.train()
    assert model.head.training and not model.branch.training and not model.branch.module[2].training
    x = torch.randn(4, 3)
    assert torch.equal(model(x), model(x))  # dropout and BatchNorm statistics stay fixed
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    model.load_state_dict(model.state_dict())  # strict loading (nnUNetv2_predict) works without the frozen part
    kept = _WithFrozenBranch(in_checkpoint=True)
    assert "branch.module.0.weight" in kept.state_dict() and len(list(trainable_parameters(kept))) == 2


@pytest.mark.parametrize("in_checkpoint", [False, True])
def test_ema_teacher_shares_frozen_parts_and_averages_the_rest(in_checkpoint):
    student = _WithFrozenBranch(in_checkpoint)
    teacher = EMATeacher(student, decay=0.5)
    assert frozen_parts(teacher.module)[0] is student.branch  # shared, not copied
    frozen_before = [t.clone() for t in student.branch.state_dict(keep_vars=True).values()] + \
        [b.clone() for b in student.branch.buffers()]
    with torch.no_grad():
        student.head.weight.add_(2.0)
    old = teacher.module.head.weight.clone()
    teacher.update(student, update_index=10)
    torch.testing.assert_close(teacher.module.head.weight, 0.5 * old + 0.5 * student.head.weight)
    after = [t for t in student.branch.state_dict(keep_vars=True).values()] + list(student.branch.buffers())
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, after))


def test_ddp_neither_broadcasts_nor_reduces_frozen_parts(tmp_path):
    """Frozen parts are identical on every rank: DDP must not broadcast them before every forward pass."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        network = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), FrozenPart(nn.BatchNorm2d(2), "vae"))
        keep_frozen_parts_out_of_ddp(network)
        wrapped = DistributedDataParallel(network)
        frozen = {id(t) for t in network[2].buffers()}
        synced = {id(t) for t in wrapped.modules_buffers}
        assert synced and not synced & frozen  # the trainable BatchNorm's statistics are still broadcast
    finally:
        dist.destroy_process_group()


def test_scaled_poly_schedule_gives_extra_modules_their_multiple():
    network, extra = nn.Linear(2, 2), nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    optimizer.add_param_group({"params": extra.parameters(), "lr_scale": 0.1})
    scheduler = ScaledPolyLRScheduler(optimizer, 0.01, 10)
    scheduler.step(5)
    expected = 0.01 * (1 - 5 / 10) ** 0.9
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * expected)


def _validate(trainer_class: type, **attributes) -> None:
    """Run the construction-time check of a one-line variant (without plans or data)."""
    variant = type("Variant", (trainer_class,), attributes)
    trainer = object.__new__(variant)
    trainer.validate_hyperparameters()


@pytest.mark.parametrize("trainer_class, attributes, message", [
    (nnUNetTrainerMeanTeacher, {"consistency_rampup": "cosine"}, "consistency_rampup = 'cosine'"),
    (nnUNetTrainerSSGNet, {"pseudo_label_filter": "pixel"}, "pseudo_label_filter"),
    (nnUNetTrainerSSGNet, {"pseudo_label_confidence": 1.5}, "pseudo_label_confidence"),
    (nnUNetTrainerSSGNet, {"pseudo_label_rounds": -1}, "pseudo_label_rounds"),
    (nnUNetTrainerMeanTeacher, {"ema_decay": 1.5}, "ema_decay"),
    (nnUNetTrainerMeanTeacher, {"consistency_rampup_fraction": 2}, "consistency_rampup_fraction"),
    (nnUNetTrainerMeanTeacher, {"exported_network": "both"}, "exported_network"),
    (nnUNetTrainerMeanTeacher, {"class_balanced_keep_fraction": 0.5}, "class_balanced_keep_fraction"),  # soft
    (nnUNetTrainerMeanTeacher, {"class_balanced_keep_fraction": 1.5, "hard_pseudo_labels": True},
     "class_balanced_keep_fraction"),
    (nnUNetTrainerMeanTeacher, {"class_balanced_keep_fraction": 0.0, "hard_pseudo_labels": True},
     "class_balanced_keep_fraction"),
    (nnUNetTrainerMeanTeacher, {"class_balanced_momentum": 0.9}, "class_balanced_momentum"),  # no keep fraction
    (nnUNetTrainerMeanTeacher, {"class_balanced_momentum": 1.0, "class_balanced_keep_fraction": 0.5,
                                "hard_pseudo_labels": True}, "class_balanced_momentum"),
    (nnUNetTrainerSRASeg, {"hole_fraction": 1.2}, "hole_fraction"),
    (nnUNetTrainerSRASeg, {"warmup_fraction": 1.0}, "warmup_fraction"),
    (nnUNetTrainerSRASeg, {"blur_kernel_size": 4}, "blur_kernel_size"),
    (nnUNetTrainerSRASeg, {"unlabeled_batch_ratio": 0.5}, "unlabeled_batch_ratio"),
    (nnUNetTrainerSRASeg, {"soft_dice_reduction": "voxel"}, "soft_dice_reduction"),
    (nnUNetTrainerSRASeg, {"sa_extractor": "clip"}, "sa_extractor"),
    (nnUNetTrainerSRASeg, {"warmup_mixing": "no"}, "warmup_mixing"),
    (nnUNetTrainerCPS, {"cps_weight": -1}, "cps_weight"),
    (nnUNetTrainerCPS, {"unlabeled_views": 2}, "unlabeled_views"),
    (nnUNetTrainerCPS, {"cps_rampup": "step"}, "cps_rampup"),
    (nnUNetTrainerSCDL, {"token_dim": 0}, "token_dim"),
    (nnUNetTrainerSCDL, {"prior_samples": 2.5}, "prior_samples"),
    (nnUNetTrainerSCDL, {"sac_max_classes": 0}, "sac_max_classes"),
    (nnUNetTrainerSCDL_CPS, {"cdba_weight": -0.1}, "cdba_weight"),
    (nnUNetTrainerSCDL_CPS, {"use_priors": "yes"}, "use_priors"),
    (nnUNetTrainerUniMatch, {"confidence_threshold": 1.5}, "confidence_threshold"),
    (nnUNetTrainerUniMatch, {"feature_dropout": 1.0}, "feature_dropout"),
    (nnUNetTrainerUniMatch, {"unlabeled_weak_views": 0}, "unlabeled_weak_views"),
    (nnUNetTrainerUniMatch, {"warmup_fraction": -0.1}, "warmup_fraction"),
    (nnUNetTrainerMeanTeacher, {"unlabeled_weak_views": 3}, "unlabeled_weak_views"),
    (nnUNetTrainerMeanTeacher, {"unlabeled_weak_views": 2}, "0 or 1"),
    (nnUNetTrainerMeanTeacher, {"consistency_confidence_threshold": 1.0}, "consistency_confidence_threshold"),
    (nnUNetTrainerMeanTeacher, {"reads_unlabeled_cases": False}, "reads_unlabeled_cases"),
    (nnUNetTrainerMeanTeacher, {"cutmix_probability": 1.5}, "cutmix_probability"),
    (nnUNetTrainerMeanTeacher, {"cutmix_volume_range": (0.6, 0.4)}, "cutmix_volume_range"),
    (nnUNetTrainerMeanTeacher, {"cutmix_volume_range": (0.5,)}, "cutmix_volume_range"),
    (nnUNetTrainerMeanTeacher, {"cutmix_volume_range": 0.5}, "cutmix_volume_range"),
    (nnUNetTrainerMeanTeacher, {"hard_pseudo_labels": 1}, "hard_pseudo_labels"),
    (nnUNetTrainerEMA, {"ema_decay": None}, "ema_decay"),  # exports the teacher, so it needs one
])
def test_bad_hyperparameters_stop_at_construction(trainer_class, attributes, message):
    with pytest.raises(UserError, match=message):
        _validate(trainer_class, **attributes)


def test_label_based_methods_refuse_region_datasets_naming_the_dataset():
    from types import SimpleNamespace
    trainer = object.__new__(nnUNetTrainerMeanTeacher)
    trainer.label_manager = SimpleNamespace(has_regions=True)
    trainer.plans_manager = SimpleNamespace(dataset_name="Dataset123_Regions")
    with pytest.raises(UserError, match="nnUNetTrainerMeanTeacher needs a label-based dataset: argmax, and "
                                        "Dataset123_Regions defines regions"):
        trainer.require_label_based("argmax")
    trainer.label_manager = SimpleNamespace(has_regions=False)
    trainer.require_label_based("argmax")


def test_default_hyperparameters_are_valid():
    for trainer_class in TRAINERS.values():
        _validate(trainer_class)


def test_validation_runs_inside_the_constructor():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_semi.core.hyperparameters import ClassHyperparameters

    class Recorder(nnUNetTrainer):  # stands in for nnUNetTrainer.__init__
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            self.num_epochs = 1000

    class Checked(ClassHyperparameters, Recorder):
        num_epochs = 0

        def validate_hyperparameters(self):
            self.require("num_epochs", self.num_epochs > 0, "> 0")

    with pytest.raises(UserError, match="Checked.num_epochs = 0"):
        Checked({}, "2d", 0, {})


def test_nan_aware_mean_for_terms_undefined_in_part_of_an_epoch():
    assert mean_over_workers([float("nan"), 1.0, 3.0]) == 2.0  # the epoch in which a warm-up ends
    assert math.isnan(mean_over_workers([float("nan")] * 3))


def test_trainers_are_discovered_without_a_list_and_core_does_not_import_them():
    assert {"nnUNetTrainerMeanTeacher", "nnUNetTrainerSRASeg", "nnUNetTrainerSRASeg_sampleDice",
            "nnUNetTrainerSRASeg_noWarmup"} <= set(TRAINERS)
    code = ("import sys, nnunet_semi.core.trainer, nnunet_semi.core.hyperparameters; "
            "assert 'nnunet_semi.trainers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    import nnunet_semi.nnunet_ext.nnunet_semi_trainers as shim
    assert shim.nnUNetTrainerSRASeg_sampleDice is TRAINERS["nnUNetTrainerSRASeg_sampleDice"]
    assert shim.nnUNetTrainerSRASeg_2epochs_3its.num_epochs == 2


def test_use_mask_for_norm_with_unlabeled_cases_is_refused():
    trainer = object.__new__(nnUNetTrainerSemi)
    trainer.__dict__.update(
        configuration_name="3d_fullres", configuration_manager=SimpleNamespace(use_mask_for_norm=[False, True]),
        unlabeled_keys=["case_9"], preprocessed_dataset_folder_base="/pre/Dataset101",
        plans_manager=SimpleNamespace(plans_name="nnUNetPlans"))
    with pytest.raises(UserError, match=r"use_mask_for_norm for channel\(s\) \[1\].*nnUNetPlans.json"):
        trainer._refuse_mask_for_norm()
    trainer.configuration_manager = SimpleNamespace(use_mask_for_norm=[False, False])
    trainer._refuse_mask_for_norm()


def test_a_dataset_without_labeled_cases_is_refused_before_nnunet_writes_splits(monkeypatch, tmp_path):
    """Regression: nnU-Net wrote a random splits_final.json before our check, whose message did not say why."""
    import nnunet_semi.core.trainer as core_trainer
    monkeypatch.setattr(core_trainer, "infer_dataset_class",
                        lambda folder: SimpleNamespace(get_identifiers=lambda f: ["a", "b"]))
    trainer = object.__new__(nnUNetTrainerSemi)
    trainer.__dict__.update(preprocessed_dataset_folder=str(tmp_path), unlabeled_keys=["a", "b"],
                            plans_manager=SimpleNamespace(dataset_name="Dataset900_AllUnlabeled"))
    with pytest.raises(UserError, match="Dataset900_AllUnlabeled has no labeled case: all 2 training cases"):
        trainer.do_split()
    assert list(tmp_path.iterdir()) == []


NOISY = {"unlabeled_weak_views": 0, "teacher_noise_std": 0.1}
WEAK = {"unlabeled_weak_views": 1, "teacher_noise_std": 0.0}


def resume_warnings(trainer_name: str, saved: dict) -> list[str]:
    """What an un-initialised trainer logs when resuming from a checkpoint whose ``semi_state`` is ``saved``."""
    from nnunet_semi import trainers
    trainer = object.__new__(getattr(trainers, trainer_name))
    logged = []
    trainer.print_to_log_file = lambda *args: logged.append(" ".join(map(str, args)))
    trainer.warn_if_settings_changed(saved)
    return logged


@pytest.mark.parametrize("trainer_name, saved, variant", [
    ("nnUNetTrainerMeanTeacher", {}, "_exportTeacher_consistency1"),  # from before records: the noisy views
    ("nnUNetTrainerMeanTeacher_weakTeacherView", {}, None),
    ("nnUNetTrainerMeanTeacher_noisyTeacherView", {}, None),
    ("nnUNetTrainerMeanTeacher_labeledOnly", {}, None),  # no unlabeled batches, so no views
    ("nnUNetTrainerMeanTeacher", {"unlabeled_views": WEAK}, None),  # recorded as unlabeled_views by one release
    ("nnUNetTrainerMeanTeacher", {"unlabeled_views": NOISY}, "_exportTeacher_consistency1"),
    ("nnUNetTrainerMeanTeacher", {"settings": {"exported_network": "teacher", **WEAK}}, None),
    ("nnUNetTrainerMeanTeacher", {"settings": {"exported_network": "teacher", **NOISY}}, "_exportTeacher_consistency1"),
    ("nnUNetTrainerMeanTeacher", {"settings": {"exported_network": "student", **NOISY}}, "_ssl4mis"),
    ("nnUNetTrainerMeanTeacher", {"exported": "student", "teacher": {}}, "_ssl4mis"),
    ("nnUNetTrainerMeanTeacher_2epochs_5its", {}, "_exportTeacher_consistency1_2epochs_5its"),  # same budget
    ("nnUNetTrainerMeanTeacher_halfUnlabeled", {}, "_exportTeacher_consistency1_halfUnlabeled"),
    ("nnUNetTrainerMeanTeacher_exportStudent", {}, ""),  # weight 1 and noisy views: no variant has them
    ("nnUNetTrainerSCDL", {"settings": {"exported_network": "teacher", **NOISY}}, ""),  # not a Mean Teacher name
    ])
def test_resuming_a_run_started_with_other_views_is_logged(trainer_name, saved, variant):
    """A checkpoint from before the weak-to-strong views became Mean Teacher's default resumes with them, logged
    with the variant that continues it as started."""
    logged = resume_warnings(trainer_name, saved)
    assert len(logged) == (variant is not None)
    named = f"nnUNetTrainerMeanTeacher{variant} and" if variant else "a variant with the former settings and"
    assert all(line.startswith("WARNING: this run was started with ") and named in line for line in logged)


@pytest.mark.parametrize("saved, warned", [({"exported": "student", "teacher": {}}, True),
                                           ({"exported": "student"}, False),  # saved before the teacher existed
                                           ({"exported": "teacher", "teacher": {}}, False), ({}, False),
                                           ({"settings": {"exported_network": "student"}}, True),
                                           ({"settings": {}}, False)])
def test_resuming_a_run_started_with_the_other_export_is_logged(saved, warned):
    """A run started exporting the student resumes exporting the teacher, logged (the views are unchanged here)."""
    logged = resume_warnings("nnUNetTrainerMeanTeacher_noisyTeacherView", saved)
    assert len(logged) == warned
    assert all("exported_network = 'student'" in line and "a variant with the former settings" in line
               for line in logged)  # no variant of _noisyTeacherView exports the student
