"""Cross Pseudo Supervision (CPS; Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021) on nnU-Net: two differently initialised networks, each trained on the other's hard
pseudo-labels of the unlabeled batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semi.core.trainer import Batch, nnUNetTrainerSemi


def cross_pseudo_supervision_loss(logits_a: torch.Tensor, logits_b: torch.Tensor,
                                  regions: bool = False) -> torch.Tensor:
    """CE(p_a, argmax p_b) + CE(p_b, argmax p_a), voxel means (CPS eq. 2-3). logits (B, C, *spatial). For
    region-based datasets (sigmoid outputs) the hard pseudo-labels are p > 0.5 and the loss is binary CE."""
    logits_a, logits_b = logits_a.float(), logits_b.float()
    if regions:
        return (F.binary_cross_entropy_with_logits(logits_a, (logits_b.detach() > 0).float())
                + F.binary_cross_entropy_with_logits(logits_b, (logits_a.detach() > 0).float()))
    return (F.cross_entropy(logits_a, logits_b.detach().argmax(1))
            + F.cross_entropy(logits_b, logits_a.detach().argmax(1)))


class nnUNetTrainerCPS(nnUNetTrainerSemi):
    """Supervised: nnU-Net's Dice + CE with deep supervision for each network on the labeled batch. Unsupervised:
    :func:`cross_pseudo_supervision_loss` on the unlabeled batch (one view, seen by both networks), weighted by
    w(t) = cps_weight * ramp-up(t) (ramp-up over the first quarter of training, as Mean Teacher's).

    * The second network is nnU-Net's planned network built a second time (another draw of nnU-Net's He
      initialisation), as an extra module of the core: trained by the same optimiser and schedule, DDP-wrapped,
      checkpointed in ``semi_state`` and restored by ``--c``.
    * The first network (``self.network``) is exported as ``network_weights``, validated and used by
      ``nnUNetv2_predict``; the CPS paper also predicts with one network. The second one is kept in ``semi_state``.
    * ``cps_weight = 0.2``: the SSL4MIS ACDC baseline weights the CE pseudo-supervision by 0.1 against a supervised
      loss of 0.5 (CE + Dice) per network; nnU-Net's supervised loss is CE + Dice, so 0.2 keeps that ratio.
    """

    cps_weight = 0.2
    cps_rampup = "sigmoid"
    cps_rampup_fraction = 0.25
    train_terms = ("loss_supervised", "loss_cps", "cps_weight")

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("cps_weight", self.cps_weight >= 0, ">= 0")
        self.require_rampup("cps_rampup", "cps_rampup_fraction")
        self.require("unlabeled_views", self.unlabeled_views == 1, "1 (both networks see the same unlabeled crop)")

    def build_extra_modules(self) -> dict[str, nn.Module]:
        """The second network, built as the first (same class method, so a method's network is doubled too)."""
        return {"second": self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision)}

    @property
    def second_network(self) -> nn.Module:
        """The second network as trained (DDP-wrapped under DDP)."""
        return self.extra_modules["second"]

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        x_l, x_u = labeled["data"], unlabeled[0]
        outputs_a, logits_a = self.forward_labeled_and_unlabeled(x_l, x_u)
        outputs_b, logits_b = self.forward_labeled_and_unlabeled(x_l, x_u, self.second_network)
        loss_supervised = self.loss(outputs_a, labeled["target"]) + self.loss(outputs_b, labeled["target"])
        loss_cps = cross_pseudo_supervision_loss(logits_a, logits_b, self.label_manager.has_regions)
        weight = self.ramped_weight(self.cps_weight, self.cps_rampup, self.cps_rampup_fraction)
        return {"loss": loss_supervised + weight * loss_cps, "loss_supervised": loss_supervised,
                "loss_cps": loss_cps, "cps_weight": torch.tensor(weight)}
