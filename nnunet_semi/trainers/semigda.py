"""SemiGDA (Huang et al., "SemiGDA: Generative Dual-Distribution Alignment for Semi-Supervised Medical Image
Segmentation", CVPR 2026) on nnU-Net, 2d only.

A frozen Stable-Diffusion VAE encodes images (and masks turned into grey images by eq. 11) into one latent space.
Two trainable branches predict the mask's latent: the image branch maps the image's own latent (M, eq. 2), the mask
branch encodes the image with nnU-Net's planned encoder (E_r, eq. 3). The frozen VAE decoder, helped by skip
adapters (eq. 7), decodes both latents into grey masks, which are reverted to class scores (eq. 11). Losses:

    L = L_sup^p + L_sup^s + lambda_u(t) (L_unsup^p + L_unsup^s)                         (eq. 12-13)
    lambda_u(t) = 0.1 exp(-5 (1 - t / t_max)^2)                                          (eq. 14)

with the latent terms of eq. 5-6 and the Dice terms of eq. 8-10 (:mod:`nnunet_semi.components.dual_distribution`).
Training runs in two stages inside one ``nnUNetv2_train``: for the first ``pretrain_fraction`` of the iterations
only the latent terms train M and E_r (the segmentation terms are weighted 0, so the adapters' gradients are zero
and DDP still sees every parameter used); then everything trainable trains on all terms. The stage follows the
step counter, so ``--c`` resumes in either stage. Inference averages the two branches' probabilities.

The VAE is never part of a checkpoint: the network loads it wherever it is built (training, ``nnUNetv2_predict``)
from ``vae_path`` or the environment variable of ``vae_kind`` (see :mod:`nnunet_semi.components.vae`); predict
with the same VAE as training. Where we differ from the released code: masks map to [-1, 1] for any number of
classes (the code is binary and maps to [0, 1]); E_r is nnU-Net's planned encoder (truncated where its stride
reaches the VAE's factor) rather than a ResNet-34, so it follows the plans and is initialised like nnU-Net.
"""
from __future__ import annotations

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_semi.components.dual_distribution import (
    SemiGDANetwork,
    latent_consistency_loss,
    latent_supervised_loss,
    mutual_dice_loss,
    supervised_dice_loss,
    truncated_encoder,
)
from nnunet_semi.components.soft_losses import one_hot
from nnunet_semi.components.vae import VAE_VARIABLES, FrozenVAE, load_diffusers_vae, vae_folder
from nnunet_semi.core.frozen import FrozenPart
from nnunet_semi.core.network import planned_network
from nnunet_semi.core.teacher import unwrap_network
from nnunet_semi.core.trainer import Batch, nnUNetTrainerSemi
from nnunet_semi.errors import UserError


class nnUNetTrainerSemiGDA(nnUNetTrainerSemi):
    """SemiGDA with the Stable-Diffusion VAE (``vae_kind = 'sd'``: a diffusers AutoencoderKL folder named by
    ``nnUNet_semi_sd_vae``); ``nnUNetTrainerSemiGDA_TAESD`` uses TAESD instead.

    Hyperparameters (class attributes): ``vae_kind``, ``vae_path`` (a folder; overrides the environment
    variable), ``mapper_width`` (M's channels), ``acr_sharpness`` (how sharply a decoded grey value picks the
    nearest class level), ``input_std_range`` (z-scored intensities within +- this many standard deviations span the
    VAE's [-1, 1]), ``unsupervised_weight`` (0.1, eq. 14) with its ramp-up over ``unsupervised_rampup_fraction`` of
    training (1: t_max is the whole training), ``pretrain_fraction`` (the latent-only first stage).

    Inference uses the network's averaged branches; nnU-Net's deep supervision does not apply (there is no U-Net
    decoder) and is disabled.
    """

    vae_kind = "sd"
    vae_path: str | None = None
    mapper_width = 64
    acr_sharpness = 4.0
    input_std_range = 3.0
    unsupervised_weight = 0.1
    unsupervised_rampup = "sigmoid"
    unsupervised_rampup_fraction = 1.0
    pretrain_fraction = 0.1
    enable_deep_supervision = False
    train_terms = ("loss_latent_sup", "loss_latent_unsup", "loss_seg_sup", "loss_seg_unsup", "unsupervised_weight",
                   "segmentation_stage")

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("vae_kind", self.vae_kind in VAE_VARIABLES, f"one of {sorted(VAE_VARIABLES)}")
        self.require("mapper_width", isinstance(self.mapper_width, int) and self.mapper_width >= 8
                     and self.mapper_width % 4 == 0, "an integer >= 8 divisible by 4 (4 attention heads)")
        self.require("acr_sharpness", self.acr_sharpness > 0, "> 0")
        self.require("input_std_range", self.input_std_range > 0, "> 0")
        self.require("unsupervised_weight", self.unsupervised_weight >= 0, ">= 0")
        self.require_rampup("unsupervised_rampup", "unsupervised_rampup_fraction")
        self.require("pretrain_fraction", 0 <= self.pretrain_fraction < 1, "in [0, 1)")
        self.require("enable_deep_supervision", not self.enable_deep_supervision, "False (no U-Net decoder)")
        self.require("unlabeled_views", self.unlabeled_views == 1, "1")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self._check_dataset(PlansManager(plans), configuration, dataset_json)
        vae_folder(self.vae_kind, self.vae_path)  # stops here, before nnU-Net writes anything, if the VAE is missing
        super().__init__(plans, configuration, fold, dataset_json, device)

    @classmethod
    def _check_dataset(cls, plans_manager: PlansManager, configuration: str, dataset_json: dict) -> None:
        """2d, disjoint classes, grey or RGB images: what the VAE and eq. 11 need."""
        name = cls.__name__
        if configuration in plans_manager.available_configurations and \
                len(plans_manager.get_configuration(configuration).patch_size) != 2:
            raise UserError(f"{name} works on 2D images only: train configuration '2d' (the VAE is a 2D image "
                            f"model), not '{configuration}'.")
        if plans_manager.get_label_manager(dataset_json).has_regions:
            raise UserError(f"{name} needs disjoint classes (each mask becomes one grey level per class); the "
                            f"dataset uses regions.")
        channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
        if channels not in (1, 3):
            raise UserError(f"{name} feeds images to an RGB VAE: it needs 1 (grey) or 3 (RGB) input channels, the "
                            f"dataset has {channels}.")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True) -> nn.Module:
        """The SemiGDA network; the frozen VAE is loaded here, so ``nnUNetv2_predict`` finds it too."""
        folder = vae_folder(cls.vae_kind, cls.vae_path)
        vae = FrozenPart(FrozenVAE(load_diffusers_vae(folder), name=f"{cls.vae_kind}:{folder}"), source=str(folder))
        planned = planned_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                  enable_deep_supervision=False)
        try:
            encoder, stages = truncated_encoder(planned.encoder, vae.module.factor)
        except ValueError as error:
            raise UserError(f"{cls.__name__}: {error}") from error
        return SemiGDANetwork(vae, encoder, stages, num_output_channels, cls.mapper_width, cls.acr_sharpness,
                              cls.input_std_range)

    def initialize(self):
        super().initialize()
        if self.label_manager.ignore_label is not None:
            raise UserError(f"{type(self).__name__} needs densely labeled cases: labeled training cases of "
                            f"{self.plans_manager.dataset_name} contain ignore voxels.")
        self.print_to_log_file(f"SemiGDA VAE: {unwrap_network(self.network).frozen_vae.name}")

    @property
    def in_segmentation_stage(self) -> bool:
        """False during the latent-only first stage, True afterwards."""
        return self.global_step >= self.budget_steps(self.pretrain_fraction)

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        x_l, target = labeled["data"], labeled["target"]
        n = x_l.shape[0]
        outputs = self.training_forward(self.network, torch.cat((x_l, unlabeled[0])))
        z_g = unwrap_network(self.network).mask_latent_target(target)
        loss_latent_sup = latent_supervised_loss(outputs.mapped_latent[:n], outputs.mask_latent[:n], z_g)  # eq. 5
        loss_latent_unsup = latent_consistency_loss(outputs.mapped_latent[n:], outputs.mask_latent[n:])  # eq. 6
        loss_seg_sup = supervised_dice_loss(outputs.image_logits[:n], outputs.mask_logits[:n],  # eq. 8-9
                                            one_hot(target, outputs.image_logits.shape[1]))
        loss_seg_unsup = mutual_dice_loss(outputs.image_logits[n:], outputs.mask_logits[n:])  # eq. 10
        weight = self.ramped_weight(self.unsupervised_weight, self.unsupervised_rampup,
                                    self.unsupervised_rampup_fraction)  # eq. 14
        stage = float(self.in_segmentation_stage)
        loss = (loss_latent_sup + stage * loss_seg_sup
                + weight * (loss_latent_unsup + stage * loss_seg_unsup))  # eq. 12-13
        return {"loss": loss, "loss_latent_sup": loss_latent_sup, "loss_latent_unsup": loss_latent_unsup,
                "loss_seg_sup": loss_seg_sup, "loss_seg_unsup": loss_seg_unsup,
                "unsupervised_weight": torch.tensor(weight), "segmentation_stage": torch.tensor(stage)}


class nnUNetTrainerSemiGDA_TAESD(nnUNetTrainerSemiGDA):
    """SemiGDA with TAESD (diffusers AutoencoderTiny from ``nnUNet_semi_taesd``), the offline stand-in for the SD
    VAE: same latent space (4 channels, 1/8 resolution), a much smaller encoder and decoder."""

    vae_kind = "taesd"
