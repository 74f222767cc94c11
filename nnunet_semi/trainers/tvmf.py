"""nnU-Net with the adaptive t-vMF Dice loss (Kato & Hotta 2024) in place of its soft Dice, as SSGNet trains its
segmentation networks. The loss itself: :mod:`nnunet_semi.components.tvmf_dice`."""
from __future__ import annotations

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_semi.components.tvmf_dice import TvMFDiceLoss
from nnunet_semi.core.hyperparameters import ClassHyperparameters


def dice_and_ce(loss: nn.Module) -> nn.Module:
    """nnU-Net's compound Dice + CE loss, inside its deep-supervision wrapper or not."""
    return loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss


class nnUNetTrainer_tvMFDice(ClassHyperparameters, nnUNetTrainer):
    """nnU-Net's loss with its Dice term replaced by t-vMF Dice: CE (BCE for regions) + t-vMF Dice, with deep
    supervision as nnU-Net has it.

    * ``tvmf_adaptive = True``: after every epoch, kappa_c = ``tvmf_lambda`` * (that epoch's validation pseudo Dice of
      class c), the Dice nnU-Net logs and averages over GPUs, so every DDP rank gets the same kappa; after ``--c``
      kappa is restored from the last logged Dice (the logger is checkpointed).
    * ``tvmf_lambda = 32`` as in the released code; ``tvmf_initial_kappa = 0`` until the first validation (phi =
      cos: a cosine Dice). ``tvmf_adaptive = False`` keeps ``tvmf_initial_kappa`` (the fixed t-vMF Dice loss).
    """

    tvmf_adaptive = True
    tvmf_lambda = 32.0
    tvmf_initial_kappa = 0.0

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("tvmf_adaptive", isinstance(self.tvmf_adaptive, bool), "True or False")
        self.require("tvmf_lambda", self.tvmf_lambda >= 0, ">= 0")
        self.require("tvmf_initial_kappa", self.tvmf_initial_kappa >= 0, ">= 0")

    def _build_loss(self):
        loss = super()._build_loss()
        dice_and_ce(loss).dc = TvMFDiceLoss(self.label_manager.num_segmentation_heads, self.label_manager.has_regions,
                                            self.tvmf_initial_kappa).to(self.device)
        return loss

    @property
    def tvmf_loss(self) -> TvMFDiceLoss:
        return dice_and_ce(self.loss).dc

    def _adapt_kappa(self) -> None:
        logged = self.logger.get_value("dice_per_class_or_region", None)
        if self.tvmf_adaptive and logged:
            self.tvmf_loss.set_kappa_from_dice(logged[-1], self.tvmf_lambda)

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)
        self._adapt_kappa()
        self.print_to_log_file(f"t-vMF kappa per class: {[round(k, 2) for k in self.tvmf_loss.kappa.tolist()]}")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._adapt_kappa()
