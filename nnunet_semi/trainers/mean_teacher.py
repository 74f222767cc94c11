"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) on nnU-Net: the baseline every other method is compared with."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_semi.core.trainer import Batch, nnUNetTrainerSemi


def noised(x: torch.Tensor, std: float) -> torch.Tensor:
    """x + clip(N(0, std^2), -2 std, 2 std): the input noise of the SSL4MIS Mean Teacher baseline."""
    return x + torch.clamp(torch.randn_like(x) * std, -2 * std, 2 * std)


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemi):
    """Supervised: nnU-Net's Dice + CE with deep supervision on the labeled batch. Unsupervised: the mean squared
    error between the student's and the EMA teacher's class probabilities on two differently augmented views of
    each unlabeled crop (the teacher's view also noised), weighted by w(t) = consistency_weight * ramp-up(t).

    Defaults follow the SSL4MIS ACDC baseline (EMA decay 0.99, weight 0.1, MSE averaged over voxels and classes)
    with the ramp-up over the first quarter of training, as Tarvainen & Valpola ramp up over 80 of 300 epochs.
    Steps without unlabeled views (a ``warmup_fraction`` > 0, or ``_labeledOnly``) optimise the supervised loss only.
    """

    ema_decay = 0.99
    unlabeled_views = 2
    consistency_weight = 0.1
    consistency_rampup = "sigmoid"
    consistency_rampup_fraction = 0.25
    teacher_noise_std = 0.1
    train_terms = ("loss_supervised", "loss_consistency", "consistency_weight")

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("ema_decay", self.ema_decay is not None, "a decay in [0, 1): Mean Teacher needs its teacher")
        self.require("unlabeled_views", self.unlabeled_views == 2, "2 (one view for the student, one for the teacher)")
        self.require("consistency_weight", self.consistency_weight >= 0, ">= 0")
        self.require_rampup("consistency_rampup", "consistency_rampup_fraction")
        self.require("teacher_noise_std", self.teacher_noise_std >= 0, ">= 0")

    def current_consistency_weight(self) -> float:
        return self.ramped_weight(self.consistency_weight, self.consistency_rampup, self.consistency_rampup_fraction)

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if not unlabeled:
            return self.supervised_only_losses(labeled)
        student_view, teacher_view = unlabeled
        labeled_outputs, student_logits = self.forward_labeled_and_unlabeled(labeled["data"], student_view)
        loss_supervised = self.loss(labeled_outputs, labeled["target"])
        with torch.no_grad():
            teacher_logits = self.teacher(noised(teacher_view, self.teacher_noise_std))
        loss_consistency = F.mse_loss(self.probabilities(student_logits), self.probabilities(teacher_logits))
        weight = self.current_consistency_weight()
        return {"loss": loss_supervised + weight * loss_consistency, "loss_supervised": loss_supervised,
                "loss_consistency": loss_consistency, "consistency_weight": torch.tensor(weight)}


class nnUNetTrainerMeanTeacher_halfUnlabeled(nnUNetTrainerMeanTeacher):
    """Half as many unlabeled crops as labeled ones per step. With forward = 1 and backward = 2 units per labeled
    batch and the teacher's no-grad forward about 0.8, an equal unlabeled batch costs (2 + 4 + 0.8) / 3 = 2.3x
    vanilla's step and a half one (1.5 + 3 + 0.4) / 3 = 1.6x: the cheaper setting of the batch-ratio ablation."""

    unlabeled_batch_ratio = 0.5


class nnUNetTrainerMeanTeacher_exportTeacher(nnUNetTrainerMeanTeacher):
    """The EMA teacher is exported (``network_weights``, validation, ``nnUNetv2_predict``) instead of the student."""

    exported_network = "teacher"


class nnUNetTrainerMeanTeacher_labeledOnly(nnUNetTrainerMeanTeacher_exportTeacher):
    """Control for ``_exportTeacher``: the same EMA teacher exported, but no unlabeled batch is ever drawn (L = L_s),
    so a gain of ``_exportTeacher`` over vanilla that this variant matches comes from weight averaging, not from the
    unlabeled images."""

    uses_unlabeled_batches = False


class nnUNetTrainerMeanTeacher_exportTeacher_consistency1(nnUNetTrainerMeanTeacher_exportTeacher):
    """Consistency-weight ablation: 1.0 instead of SSL4MIS's 0.1. On Kvasir-SEG 10 % at 400 iterations the
    weighted term logged at 0.1 is about 0.0015 (MSE 0.012-0.037) against a supervised Dice + CE of 0.1-0.3 in
    magnitude, so the unlabeled images barely reach the gradient at small budgets."""

    consistency_weight = 1.0


class nnUNetTrainerMeanTeacher_exportTeacher_consistency3(nnUNetTrainerMeanTeacher_exportTeacher):
    """Consistency-weight ablation: 3.0, between ``_consistency1`` and ``_consistency10``. Measured past the peak on
    Kvasir-SEG 10 % at 400 iterations (5 paired runs: +0.15 Dice over vanilla, weight 1 +0.99)."""

    consistency_weight = 3.0


class nnUNetTrainerMeanTeacher_exportTeacher_consistency10(nnUNetTrainerMeanTeacher_exportTeacher):
    """Consistency-weight ablation: 10.0, the upper end of the dose-response with ``_consistency1``."""

    consistency_weight = 10.0


class nnUNetTrainerMeanTeacher_exportTeacher_consistency1_halfUnlabeled(
        nnUNetTrainerMeanTeacher_exportTeacher_consistency1, nnUNetTrainerMeanTeacher_halfUnlabeled):
    """Batch-ratio ablation of ``_consistency1``: ``_halfUnlabeled``'s unlabeled batch B/2 (measured in training on
    Kvasir-SEG 10 %, 2-core CPU: 1.87x vanilla's step instead of 2.28x)."""
