"""SCDL (Su et al., "Semantic Class Distribution Learning for Debiasing Semi-Supervised Medical Image
Segmentation", 2026) as a plug-in over a base semi-supervised trainer: Mean Teacher (``nnUNetTrainerSCDL``) and
Cross Pseudo Supervision (``nnUNetTrainerSCDL_CPS``).

The equations live in :mod:`nnunet_semi.components.class_distribution`; this module adds them to a base trainer:
the network becomes an :class:`SCDLNetwork` (classmethod, so ``nnUNetv2_predict`` rebuilds its priors), every
training forward pass records its tokens, and the step's loss gains

    cdba_weight * (E2P + P2E)   (eq. 3-4, on every token of the labeled and unlabeled batch)
  + sac_weight * SAC            (eq. 8-9, labeled batch; proxies only)

for each trained network (CPS: both networks, each with its own proxies). Base losses and schedules are unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnunet_semi.components.class_distribution import (
    SCDLNetwork,
    bidirectional_alignment_losses,
    semantic_anchor_loss,
    semantic_anchors,
)
from nnunet_semi.core.network import planned_network
from nnunet_semi.core.teacher import unwrap_network
from nnunet_semi.core.trainer import Batch, full_resolution
from nnunet_semi.trainers.cps import nnUNetTrainerCPS
from nnunet_semi.trainers.mean_teacher import (nnUNetTrainerMeanTeacher,
                                               nnUNetTrainerMeanTeacher_exportTeacher_consistency1,
                                               nnUNetTrainerMeanTeacher_ssl4mis)

SCDL_TERMS = ("loss_e2p", "loss_p2e", "loss_sac")


class SCDLPlugin:
    """Mixin that adds SCDL to a base trainer (put it first: ``class X(SCDLPlugin, nnUNetTrainerCPS)``).

    Hyperparameters (class attributes):

    * ``token_dim`` (D = 256), ``token_grid`` (at most 12 tokens per axis), ``token_stage`` (the encoder stage the
      tokens come from; -1, the deepest, by default), ``prior_samples`` (S = 50 draws per proxy and per token).
    * ``use_priors``: inject the priors into the decoder (variant ``_noPriors``: no priors, network as planned plus
      the token head and proxies, which then only serve the losses).
    * ``cdba_weight`` (E2P + P2E; ``_noCDBA``: 0), ``sac_weight`` (``_noSAC``: 0).
    * ``sac_max_classes``: encoder passes per step and network for SAC (one per class present in this GPU's labeled
      batch; over CPS for each of the two networks); None uses every present class, k a random subset of k.
      SAC's passes run in train mode; with nnU-Net's InstanceNorm plans that changes nothing, but plans with
      BatchNorm would update its running statistics with masked images and, under DDP (SyncBatchNorm), run a
      different number of synchronised passes per GPU: use InstanceNorm plans or ``sac_weight = 0`` there.

    Dataset notes: with a single foreground class SCDL still runs (two proxies: background and foreground), but it
    has no tail classes to debias. Region-based datasets run with one proxy per region; SAC is skipped there, as
    regions overlap and have no single class label per voxel.
    """

    token_dim = 256
    token_grid = 12
    token_stage = -1
    prior_samples = 50
    use_priors = True
    cdba_weight = 0.1
    sac_weight = 0.1
    sac_max_classes: int | None = None

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        for name in ("token_dim", "token_grid", "prior_samples"):
            self.require(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1, "an integer >= 1")
        self.require("token_stage", isinstance(self.token_stage, int), "an integer index of an encoder stage")
        self.require("use_priors", isinstance(self.use_priors, bool), "True or False")
        self.require("cdba_weight", self.cdba_weight >= 0, ">= 0")
        self.require("sac_weight", self.sac_weight >= 0, ">= 0")
        self.require("sac_max_classes", self.sac_max_classes is None or (
            isinstance(self.sac_max_classes, int) and self.sac_max_classes >= 1), "None or an integer >= 1")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        planned = planned_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                  enable_deep_supervision)
        return SCDLNetwork(planned, num_output_channels, cls.token_dim, cls.token_grid, cls.token_stage,
                           cls.prior_samples, cls.use_priors)

    def initialize(self):
        super().initialize()
        if self.label_manager.has_regions and self.sac_weight > 0:
            self.print_to_log_file("SCDL: region-based labels, SAC is skipped (regions have no single class per "
                                   "voxel); CDBA and the priors are used.")

    def training_forward(self, network: nn.Module, x: torch.Tensor):
        outputs, tokens = network(x, return_tokens=True)
        self.step_tokens.append((unwrap_network(network), tokens))
        return outputs

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        self.step_tokens: list[tuple[SCDLNetwork, torch.Tensor]] = []  # filled by training_forward
        try:
            terms = super().compute_train_losses(labeled, unlabeled)
            e2p, p2e, sac = self.scdl_losses(labeled)
        finally:
            self.step_tokens = []  # no tokens (or their graphs) outlive the step, also after an error
        terms["loss"] = terms["loss"] + self.cdba_weight * (e2p + p2e) + self.sac_weight * sac
        return {**terms, "loss_e2p": e2p, "loss_p2e": p2e, "loss_sac": sac}

    def scdl_losses(self, labeled: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E2P, P2E, SAC), each summed over the networks trained in this step."""
        e2p = p2e = sac = torch.zeros((), device=self.device)
        for network, tokens in self.step_tokens:
            network_e2p, network_p2e = bidirectional_alignment_losses(tokens, network.proxies.means)  # eq. 3-4
            e2p, p2e = e2p + network_e2p, p2e + network_p2e
            if self.sac_weight > 0 and not self.label_manager.has_regions:
                sac = sac + self.semantic_anchor_loss(network, labeled)
        return e2p, p2e, sac

    def sac_classes(self, labels: torch.Tensor) -> list[int]:
        """Classes present in the labeled batch (ignore label excluded), or a random subset of sac_max_classes."""
        present = [int(c) for c in torch.unique(labels) if int(c) < self.label_manager.num_segmentation_heads]
        if self.sac_max_classes is not None and len(present) > self.sac_max_classes:
            present = sorted(np.random.choice(present, self.sac_max_classes, replace=False).tolist())
        return present

    def semantic_anchor_loss(self, network: SCDLNetwork, labeled: Batch) -> torch.Tensor:
        labels = full_resolution(labeled["target"])
        anchors, present = semantic_anchors(network, labeled["data"], labels, self.sac_classes(labels),
                                            self.label_manager.num_segmentation_heads)  # eq. 8
        return semantic_anchor_loss(network.proxies.means, anchors, present)  # eq. 9


class nnUNetTrainerSCDL(SCDLPlugin, nnUNetTrainerMeanTeacher_ssl4mis):
    """SCDL over Mean Teacher (the EMA teacher copies the proxies and priors and predicts in eval mode), with the
    SSL4MIS base setting the paper builds on and SCDL was measured with (consistency weight 0.1, student exported)."""

    train_terms = nnUNetTrainerMeanTeacher_ssl4mis.train_terms + SCDL_TERMS


class nnUNetTrainerSCDL_exportTeacher_consistency1(SCDLPlugin, nnUNetTrainerMeanTeacher_exportTeacher_consistency1):
    """SCDL over the Mean Teacher variant of the same name (consistency weight 1, EMA teacher exported with its
    proxies and priors, the noisy views it was measured with): the candidate base for ``nnUNetTrainerSCDL``."""

    train_terms = nnUNetTrainerMeanTeacher_exportTeacher_consistency1.train_terms + SCDL_TERMS


class nnUNetTrainerSCDL_meanTeacherDefaults(SCDLPlugin, nnUNetTrainerMeanTeacher):
    """SCDL over Mean Teacher's current defaults (weak-to-strong views, consistency weight 1, EMA teacher exported
    with its proxies and priors). Kvasir-SEG 10 % at 1000 iterations (README, three runs): +1.53 [-0.29, +3.35]
    Dice over vanilla, level with the defaults alone (-0.06): one foreground class leaves SCDL nothing to debias.
    ACDC 2d at 3000 iterations, fold 0 (one run): 81.24, +0.30 over vanilla and 0.41 below the defaults."""

    train_terms = nnUNetTrainerMeanTeacher.train_terms + SCDL_TERMS


class nnUNetTrainerSCDL_CPS(SCDLPlugin, nnUNetTrainerCPS):
    """SCDL over Cross Pseudo Supervision (each network has its own proxies, priors and SCDL losses)."""

    train_terms = nnUNetTrainerCPS.train_terms + SCDL_TERMS


class nnUNetTrainerSCDL_noSAC(nnUNetTrainerSCDL):
    sac_weight = 0.0


class nnUNetTrainerSCDL_noPriors(nnUNetTrainerSCDL):
    use_priors = False


class nnUNetTrainerSCDL_noCDBA(nnUNetTrainerSCDL):
    cdba_weight = 0.0


class nnUNetTrainerSCDL_CPS_noSAC(nnUNetTrainerSCDL_CPS):
    sac_weight = 0.0


class nnUNetTrainerSCDL_CPS_noPriors(nnUNetTrainerSCDL_CPS):
    use_priors = False


class nnUNetTrainerSCDL_CPS_noCDBA(nnUNetTrainerSCDL_CPS):
    cdba_weight = 0.0


class nnUNetTrainerSCDL_sac1(nnUNetTrainerSCDL):
    """SAC with one random present class per step (one encoder pass instead of one per class)."""

    sac_max_classes = 1
