"""UniMatch (Yang, Qi, Feng, Zhang, Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023) on nnU-Net: confident pseudo-labels from a weakly augmented view supervise two strongly
augmented views and a feature-perturbed decoding of the weak view.

Views of each unlabeled crop share nnU-Net's geometric augmentation (spatial transform, mirroring), so they are
voxel-aligned: the weak view has no photometric transform, the two strong views each get nnU-Net's photometric
transforms independently (noise, blur, brightness, contrast, low resolution, gamma) and a CutMix box.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn

from nnunet_semi.components.mixing import cutmix_box_mask, next_sample, paste
from nnunet_semi.components.pseudo_labels import PseudoLabelDiceCELoss, confident_pseudo_labels
from nnunet_semi.core.network import PlannedNetworkWrapper, planned_network
from nnunet_semi.core.trainer import Batch, full_resolution, nnUNetTrainerSemi, split_batch_outputs
from nnunet_semi.errors import UserError


def channel_dropout(features: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of whole channels (Dropout2d / Dropout3d) of (B, C, *spatial) features, always active."""
    return (F.dropout3d if features.ndim == 5 else F.dropout2d)(features, p, training=True)


class FeaturePerturbedNetwork(PlannedNetworkWrapper):
    """nnU-Net's planned U-Net whose training forward can also decode feature-perturbed copies of some samples
    (UniMatch's FP stream, Sec. 3.2). ``forward(x)`` is the planned network (validation, ``nnUNetv2_predict``);
    ``forward(x, perturbed=(start, stop), dropout=p)`` appends to the batch the samples ``start:stop`` decoded once
    more from their encoder features with channel dropout ``p``, in the same pass (one DDP forward per step, no
    hooks for torch.compile to miss)."""

    def __init__(self, planned: nn.Module):
        super().__init__(planned)
        if not isinstance(planned.decoder, UNetDecoder):
            raise UserError(f"UniMatch's feature perturbation needs nnU-Net's U-Net (an encoder returning its skips "
                            f"and a UNetDecoder); the plans' architecture {type(planned).__name__} has decoder "
                            f"{type(planned.decoder).__name__}.")

    def forward(self, x: torch.Tensor, perturbed: tuple[int, int] | None = None, dropout: float = 0.5):
        skips = self.encoder(x)
        if perturbed is not None:
            start, stop = perturbed
            skips = [torch.cat((s, channel_dropout(s[start:stop], dropout))) for s in skips]
        return self.decoder(skips)


class nnUNetTrainerUniMatch(nnUNetTrainerSemi):
    """Loss per step after a supervised warm-up (no EMA teacher and no ramp-up):

        L = L_s + unsupervised_weight * (fp_weight * L_fp + strong_weight * (L_s1 + L_s2) / 2)

    L_s is nnU-Net's Dice + CE with deep supervision on the labeled batch. Each unlabeled term compares a
    prediction with the argmax of p^w, the detached prediction on the weak view (same network, same forward pass),
    at voxels where max p^w >= ``confidence_threshold`` (Sec. 3.1, FixMatch's loss): nnU-Net's soft Dice over those
    voxels plus cross-entropy averaged over all voxels with the others at 0. L_s1, L_s2 (dual-stream, Sec. 3.3): the
    two strong views, each with its own CutMix box taken from the next sample of the batch (its strong view and
    its pseudo-label; a batch of one is not mixed). L_fp (Sec. 3.2): the weak view decoded from encoder features
    with channel dropout ``feature_dropout``.

    Warm-up, not in the paper: the first ``warmup_fraction`` (25 %) of the iterations train on the labeled batch
    only (L = L_s). Without it, on Kvasir-SEG 10 % at 400 iterations, the network was >= 95 % sure of background
    almost everywhere before it had found a polyp, and the confident all-background pseudo-labels collapsed it to
    background (test Dice 0.1 %, see README). The paper's fixed threshold only holds the unlabeled terms back while
    the network is unsure, which a two-class problem with a dominant background class does not ensure.
    ``nnUNetTrainerUniMatch_noWarmup`` is the paper's schedule.

    Differences from the released code, on purpose: it optimises (L_s + L_u) / 2 with fp 0.5 and strong 0.25 +
    0.25; halving the whole loss only halves the learning rate, so nnU-Net's schedule is kept for L_s and
    ``unsupervised_weight`` = 1 keeps the released balance between the terms. Its ACDC code uses Dice only on
    unlabeled images; here they get Dice + CE like the labeled ones. Its CutMix partners come from a second
    unlabeled batch predicted in eval mode (one more forward pass); here they are the batch's next sample, whose
    weak prediction is already at hand. Label-based datasets only (regions have no single argmax pseudo-label).
    """

    unlabeled_views = 3  # weak, strong 1, strong 2
    unlabeled_weak_views = 1
    warmup_fraction = 0.25
    confidence_threshold = 0.95
    feature_dropout = 0.5
    cutmix_probability = 0.5
    unsupervised_weight = 1.0
    fp_weight = 0.5
    strong_weight = 0.5
    train_terms = ("loss_supervised", "loss_strong", "loss_fp", "confident_fraction")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return FeaturePerturbedNetwork(planned_network(plans_manager, configuration_manager, num_input_channels,
                                                       num_output_channels, enable_deep_supervision))

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("unlabeled_views", self.unlabeled_views == 3, "3 (one weak and two strong views)")
        self.require("unlabeled_weak_views", self.unlabeled_weak_views == 1, "1 (the weak view comes first)")
        self.require("confidence_threshold", 0 <= self.confidence_threshold <= 1, "in [0, 1]")
        self.require("feature_dropout", 0 <= self.feature_dropout < 1, "in [0, 1)")
        self.require("cutmix_probability", 0 <= self.cutmix_probability <= 1, "in [0, 1]")
        for name in ("unsupervised_weight", "fp_weight", "strong_weight"):
            self.require(name, getattr(self, name) >= 0, ">= 0")

    def initialize(self):
        super().initialize()
        self.require_label_based("UniMatch's pseudo-labels are one class per voxel")
        self.unlabeled_loss = PseudoLabelDiceCELoss(self.configuration_manager.batch_dice, self.is_ddp)

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if not unlabeled:
            return self.supervised_only_losses(labeled)
        weak, strong_1, strong_2 = unlabeled
        n_labeled, n_unlabeled = labeled["data"].shape[0], weak.shape[0]
        boxes = [cutmix_box_mask(n_unlabeled, tuple(weak.shape[2:]), self.cutmix_probability, device=weak.device)
                 for _ in range(2)]
        partner = next_sample(n_unlabeled, weak.device)
        mixed = [paste(strong, box, partner) for strong, box in zip((strong_1, strong_2), boxes)]
        perturbed = (n_labeled, n_labeled + n_unlabeled) if self.fp_weight > 0 else None
        outputs = self.network(torch.cat((labeled["data"], weak, *mixed)), perturbed=perturbed,
                               dropout=self.feature_dropout)
        labeled_outputs, unlabeled_outputs = split_batch_outputs(outputs, n_labeled)
        weak_logits, logits_1, logits_2, *fp_logits = full_resolution(unlabeled_outputs).split(n_unlabeled)
        labels, confident = confident_pseudo_labels(self.probabilities(weak_logits.detach()),
                                                    self.confidence_threshold)
        loss_supervised = self.loss(labeled_outputs, labeled["target"])
        zero = torch.zeros((), device=weak.device)
        loss_fp = self.unlabeled_loss(fp_logits[0], labels, confident) if fp_logits else zero  # Sec. 3.2
        loss_strong = sum(self.unlabeled_loss(logits, paste(labels, box, partner), paste(confident, box, partner))
                          for logits, box in zip((logits_1, logits_2), boxes)) / 2  # Sec. 3.3
        loss_unlabeled = self.fp_weight * loss_fp + self.strong_weight * loss_strong
        return {"loss": loss_supervised + self.unsupervised_weight * loss_unlabeled,
                "loss_supervised": loss_supervised, "loss_strong": loss_strong, "loss_fp": loss_fp,
                "confident_fraction": confident.mean()}


class nnUNetTrainerUniMatch_noFP(nnUNetTrainerUniMatch):
    """Ablation: no feature-perturbation stream (no perturbed decoder pass; ``loss_fp`` is logged as 0)."""

    fp_weight = 0.0


class nnUNetTrainerUniMatch_noWarmup(nnUNetTrainerUniMatch):
    """The paper's schedule: unlabeled terms from the first iteration (collapsed to background on Kvasir-SEG)."""

    warmup_fraction = 0.0


class nnUNetTrainerUniMatch_noCutMix(nnUNetTrainerUniMatch):
    cutmix_probability = 0.0


class nnUNetTrainerUniMatch_halfUnlabeled(nnUNetTrainerUniMatch):
    """Half as many unlabeled crops as labeled ones per step: each unlabeled crop costs the network about four
    samples (weak, two strong, the perturbed decoder pass). Step time on ACDC 2d, CPU: 2.58x vanilla's against the
    default's 5.13x (README, "Benchmarks"); its Dice is not measured."""

    unlabeled_batch_ratio = 0.5
