"""SRA-Seg (Aranya & Desai, "SRA-Seg: Synthetic to Real Alignment for Semi-Supervised Medical Image Segmentation").

Built on bidirectional copy-paste (BCP, Bai et al. CVPR 2023), with unlabeled (in the paper: StyleGAN2-ADA
synthetic) images:

1. pseudo-labels from an EMA teacher: softmax, argmax, largest connected component per class, one-hot;
2. soft-mix: a box hole covering 2/3 of every spatial dimension, edges blurred by a 3^d average pool; for every
   (unlabeled, labeled) pair V1 = a V_u + (1 - a) V_l and V2 = a V_l + (1 - a) V_u, with soft labels mixed alike
   (eq. 6-11);
3. soft Dice + soft cross-entropy on the continuous labels (eq. 13-14), with nnU-Net's deep supervision (soft
   targets averaged down to every output scale);
4. similarity alignment (SA, eq. 15-16, weight 0.1): a frozen extractor (DINOv2 ViT-B/14, or EfficientNet-Lite0)
   finds each unlabeled sample's nearest labeled sample in the batch, and the segmentation network's own feature
   statistics of the unlabeled sample are pulled towards those of that real sample;
5. two phases: supervised warm-up on soft-mixed labeled pairs, then the semi-supervised phase with a teacher
   initialised from the warm-up student.

Where we differ from the authors' released code, and why:

* SA: the released ``compute_sa_loss`` runs the frozen extractor on raw images only, so the term is a constant that
  never reaches the segmentation network (and during warm-up it compares images with themselves). Eq. 15-16 define
  the distance to the nearest real sample; we keep the frozen extractor for the matching and for the logged domain
  gap, and apply the distance to the segmentation network's features, which the loss can move. Features are L2
  normalised before the Euclidean distance so the term cannot shrink by scaling features down; the real samples'
  features are computed without a graph (separate passes: per-sample statistics with nnU-Net's InstanceNorm). The
  network's features are the per-channel mean and standard deviation of its last decoder stage: pooled bottleneck
  outputs, taken after InstanceNorm and LeakyReLU, have their per-sample statistics normalised away (a toy image and
  noise have cosine 0.996 at initialisation), while the decoder statistics separate visibly different images.
* Soft Dice: eq. 13 sums over all voxels of the batch per class (``soft_dice_reduction = 'batch'``); the released
  code averages Dice over samples and classes, so a class absent from one sample costs about 1/C there
  (``'sample'``, variant ``nnUNetTrainerSRASeg_sampleDice``).
* Soft edges: the released code finally uses a zero-padded 5x5 Gaussian, which darkens the patch border; we use the
  paper's 3x3 average pool without counting the padding.
* Each sample gets its own hole position (the released code shares one per batch), both mixtures are built from the
  same pair, and the two phases share nnU-Net's single poly learning-rate schedule and optimiser; the teacher starts
  from the last warm-up student (the released code reloads the best-validation warm-up checkpoint).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_semi.components.feature_extractors import EXTRACTORS, FrozenFeatureExtractor, load_feature_extractor
from nnunet_semi.components.mixing import blend, soft_box_mask
from nnunet_semi.components.pseudo_labels import filtered_hard_pseudo_labels
from nnunet_semi.components.soft_losses import DICE_REDUCTIONS, SoftDiceCELoss, one_hot, soft_targets_for_outputs
from nnunet_semi.core.teacher import unwrap_network
from nnunet_semi.core.trainer import Batch, full_resolution, nnUNetTrainerSemi, split_batch_outputs


def decoder_feature_statistics(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of the last decoder stage of an nnU-Net architecture for a batch
    (B, C_in, *spatial) -> (B, 2 * C_last)."""
    captured = []
    hook = unwrap_network(network).decoder.stages[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        unwrap_network(network)(x)
    finally:
        hook.remove()
    features = captured[0].flatten(2).float()
    return torch.cat((features.mean(-1), features.std(-1)), dim=1)


def nearest_real_distances(synthetic: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each synthetic embedding, the Euclidean distance to and index of the nearest real embedding (eq. 16)."""
    distances = torch.cdist(synthetic.float(), real.float())
    return distances.min(dim=1)


def similarity_alignment_loss(synthetic_features: torch.Tensor, real_features: torch.Tensor,
                              nearest: torch.Tensor) -> torch.Tensor:
    """Mean distance between each synthetic sample's (L2-normalised) features and those of its matched real sample,
    real features held fixed: pulls synthetic representations towards real ones (eq. 15)."""
    synthetic = F.normalize(synthetic_features.float(), dim=1)
    real = F.normalize(real_features.float(), dim=1).detach()
    return (synthetic - real[nearest]).norm(dim=1).mean()


class nnUNetTrainerSRASeg(nnUNetTrainerSemi):
    """SRA-Seg in nnU-Net. Hyperparameters (class attributes, override in one-line variants):

    * ``warmup_fraction``: share of all iterations spent in the supervised warm-up (paper: 10k of 60k).
    * ``warmup_mixing``: warm up on soft-mixed labeled pairs (the paper, as BCP) or, if False, on the unmixed
      labeled crops with nnU-Net's own loss.
    * ``sa_weight``: lambda of the SA loss (0 disables it; the domain gap is still logged).
    * ``sa_extractor``: ``auto`` (DINOv2 if its weights are available locally, else EfficientNet-Lite0),
      ``dinov2``, ``efficientnet_lite0`` or ``none``.
    * ``soft_dice_reduction``: ``'batch'`` (eq. 13) or ``'sample'`` (the released code).
    * ``ema_decay``, ``hole_fraction``, ``blur_kernel_size``.

    Every unlabeled sample is mixed with the labeled sample at the same batch position, so the unlabeled batch
    size equals the labeled one (``unlabeled_batch_ratio`` must stay 1).
    """

    ema_decay = 0.99
    warmup_fraction = 1 / 6
    warmup_mixing = True
    sa_weight = 0.1
    sa_extractor = "auto"
    hole_fraction = 2 / 3
    blur_kernel_size = 3
    soft_dice_reduction = "batch"
    train_terms = ("loss_seg", "loss_sa", "domain_gap")

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("sa_weight", self.sa_weight >= 0, ">= 0")
        self.require("warmup_mixing", isinstance(self.warmup_mixing, bool), "True or False")
        self.require("sa_extractor", self.sa_extractor in EXTRACTORS, f"one of {EXTRACTORS}")
        self.require("hole_fraction", 0 < self.hole_fraction < 1, "in (0, 1)")
        self.require("blur_kernel_size", isinstance(self.blur_kernel_size, int) and self.blur_kernel_size >= 1
                     and self.blur_kernel_size % 2 == 1, "an odd integer >= 1 (1: hard edges)")
        self.require("soft_dice_reduction", self.soft_dice_reduction in DICE_REDUCTIONS, f"one of {DICE_REDUCTIONS}")
        self.require("unlabeled_batch_ratio", self.unlabeled_batch_ratio == 1,
                     "1: each unlabeled sample is mixed with the labeled sample at its batch position")

    def initialize(self):
        super().initialize()
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise RuntimeError(f"{self.__class__.__name__} mixes one-hot labels: it needs densely labeled cases "
                               f"and class labels, not regions or ignore voxels in labeled cases.")
        weights = self.loss.weight_factors if self.enable_deep_supervision else None
        loss = SoftDiceCELoss(self.soft_dice_reduction)
        self.soft_loss = DeepSupervisionWrapper(loss, weights) if weights else loss
        self.feature_extractor: FrozenFeatureExtractor | None = load_feature_extractor(self.sa_extractor)
        if self.feature_extractor is not None:
            self.feature_extractor.to(self.device)
            self.print_to_log_file(f"SA feature extractor: {self.feature_extractor.name}")

    @property
    def teacher_start_step(self) -> int:
        """The teacher starts from the warm-up student."""
        return self.warmup_steps

    @property
    def num_classes(self) -> int:
        return self.label_manager.num_segmentation_heads

    def segmentation_loss(self, outputs, soft_target: torch.Tensor) -> torch.Tensor:
        """Soft Dice + soft CE on every deep-supervision output, weighted as nnU-Net weights its own loss."""
        return self.soft_loss(outputs, soft_targets_for_outputs(soft_target, outputs))

    def mixing_mask(self, x: torch.Tensor) -> torch.Tensor:
        return soft_box_mask(x.shape[0], tuple(x.shape[2:]), self.hole_fraction, self.blur_kernel_size, x.device)

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.global_step < self.warmup_steps:
            return self.warmup_losses(labeled)
        return self.semi_supervised_losses(labeled, unlabeled[0])

    def warmup_losses(self, labeled: Batch) -> dict[str, torch.Tensor]:
        """Supervised warm-up: each labeled sample pasted (softly) into the next one of the batch, or nnU-Net's
        own loss on the unmixed batch without ``warmup_mixing``."""
        if not self.warmup_mixing:
            return self.supervised_only_losses(labeled)
        x = labeled["data"]
        y = one_hot(full_resolution(labeled["target"]), self.num_classes)
        partner = torch.roll(torch.arange(x.shape[0], device=x.device), 1)
        alpha = self.mixing_mask(x)
        loss_seg = self.segmentation_loss(self.network(blend(x, x[partner], alpha)), blend(y, y[partner], alpha))
        nan = torch.tensor(float("nan"))
        return {"loss": loss_seg, "loss_seg": loss_seg, "loss_sa": nan, "domain_gap": nan}

    def semi_supervised_losses(self, labeled: Batch, x_u: torch.Tensor) -> dict[str, torch.Tensor]:
        x_l = labeled["data"]
        y_l = one_hot(full_resolution(labeled["target"]), self.num_classes)
        with torch.no_grad():
            pseudo = filtered_hard_pseudo_labels(self.teacher(x_u))  # step 1
        alpha = self.mixing_mask(x_l)  # step 2, eq. 6-11
        v1, l1 = blend(x_u, x_l, alpha), blend(pseudo, y_l, alpha)
        v2, l2 = blend(x_l, x_u, alpha), blend(y_l, pseudo, alpha)
        first, second = split_batch_outputs(self.network(torch.cat((v1, v2))), x_l.shape[0])
        loss_seg = self.segmentation_loss(first, l1) + self.segmentation_loss(second, l2)  # eq. 13-14
        loss_sa, gap = self.similarity_alignment(x_l, x_u)
        return {"loss": loss_seg + self.sa_weight * loss_sa, "loss_seg": loss_seg, "loss_sa": loss_sa,
                "domain_gap": gap}

    def similarity_alignment(self, x_l: torch.Tensor, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(SA loss on the segmentation network's features, frozen-extractor domain gap), eq. 15-16."""
        nan = torch.tensor(float("nan"))
        if self.feature_extractor is None:
            return torch.zeros((), device=x_u.device), nan
        gap, nearest = nearest_real_distances(self.feature_extractor(x_u), self.feature_extractor(x_l))
        if self.sa_weight == 0:
            return torch.zeros((), device=x_u.device), gap.mean()
        synthetic_features = decoder_feature_statistics(self.network, x_u)
        with torch.no_grad():  # eq. 15 holds the real features fixed: no graph for them
            real_features = decoder_feature_statistics(self.network, x_l)
        return similarity_alignment_loss(synthetic_features, real_features, nearest), gap.mean()


class nnUNetTrainerSRASeg_noSA(nnUNetTrainerSRASeg):
    """Ablation without the similarity-alignment loss (the domain gap is still logged)."""

    sa_weight = 0.0


class nnUNetTrainerSRASeg_effnetSA(nnUNetTrainerSRASeg):
    """SA matching with the offline ImageNet EfficientNet-Lite0 instead of DINOv2."""

    sa_extractor = "efficientnet_lite0"


class nnUNetTrainerSRASeg_dinov2SA(nnUNetTrainerSRASeg):
    """SA matching with DINOv2 ViT-B/14 only (fails with instructions if its weights are not available)."""

    sa_extractor = "dinov2"


class nnUNetTrainerSRASeg_sampleDice(nnUNetTrainerSRASeg):
    """Soft Dice averaged over samples and classes, as in the authors' released code."""

    soft_dice_reduction = "sample"


class nnUNetTrainerSRASeg_noWarmup(nnUNetTrainerSRASeg):
    """No supervised warm-up: the teacher starts from the randomly initialised student."""

    warmup_fraction = 0.0


class nnUNetTrainerSRASeg_halfWarmup(nnUNetTrainerSRASeg):
    """Supervised warm-up for half of the budget: at small budgets the paper's 1/6 ends before the teacher segments."""

    warmup_fraction = 0.5


class nnUNetTrainerSRASeg_halfPlainWarmup(nnUNetTrainerSRASeg_halfWarmup):
    """Half-budget warm-up on unmixed labeled crops with nnU-Net's loss: mixed pairs learn slower at small budgets."""

    warmup_mixing = False
