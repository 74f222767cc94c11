"""SSGNet's segmentation training (Ma, Stathaki & Lazarou, BMVC 2025, section 3.4): iterative pseudo-label rounds
over unlabeled (e.g. GAN-synthesised) cases inside one ``nnUNetv2_train`` command, optionally with the adaptive
t-vMF Dice loss. The rounds' parts: :mod:`nnunet_semi.components.pseudo_label_rounds`."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_semi.components.pseudo_label_rounds import (
    PSEUDO_LABEL_FILTERS,
    PseudoLabeledDataset,
    PseudoLabelStore,
    RoundwisePolyLRScheduler,
    foreground_locations,
    pseudo_label,
    round_of_epoch,
    round_start_epochs,
    write_missing_pseudo_labels,
)
from nnunet_semi.core.teacher import unwrap_network
from nnunet_semi.core.trainer import Batch, finish_loaders, nnUNetTrainerSemi
from nnunet_semi.errors import UserError
from nnunet_semi.trainers.tvmf import nnUNetTrainer_tvMFDice


class nnUNetTrainerSSGNet(nnUNetTrainerSemi):
    """Self-training in rounds: round 0 trains nnU-Net on the labeled cases; at the first epoch of every later round
    the current network predicts every unlabeled case (synthetic cases written by ``nnunet-semi synthesize`` are
    unlabeled cases too) with nnU-Net's predictor in process (sliding window, Gaussian weighting, mirroring over the
    axes nnU-Net allows at inference unless ``pseudo_label_mirroring = False``), and training continues on labeled
    plus pseudo-labeled cases with nnU-Net's own loss, loader, sampling and augmentation.

    * ``pseudo_label_rounds = 2`` refinement rounds (the paper sees diminishing returns after the second); the
      ``num_epochs`` of the command are split evenly over the ``pseudo_label_rounds + 1`` rounds.
    * Schedule: every round restarts nnU-Net's poly learning rate from ``initial_lr`` over its own epochs, from the
      previous round's weights (the optimiser's momentum is kept). Each round is then one complete nnU-Net training,
      so pseudo-labels come from a converged network as in the paper (where each round is a separate training), and
      the pseudo-labeled cases are learnt at a full learning rate rather than at the tail of one long schedule.
    * ``pseudo_label_filter``: ``None`` (the paper and its released code: every voxel of every case), ``'voxel'``
      (voxels whose confidence is below ``pseudo_label_confidence`` get the ignore label; nnU-Net's loss masks them)
      or ``'case'`` (cases whose mean voxel confidence is below it are not trained on). Confidence: the winning
      class's softmax probability (regions: the least certain region's max(p, 1 - p)). The released code has no
      filter, and its batch bug saved only one pseudo-label in four; here every unlabeled case gets one.
    * Pseudo-labels live in ``<fold folder>/pseudo_labels/round_<r>/<case>.pkl`` at the preprocessed resolution,
      written atomically (never into the user's dataset); a new training (epoch 0) removes old ones. Prediction is
      spread over DDP ranks (each predicts every world_size-th case with its unwrapped network, then all wait for
      each other). ``--c`` resumes mid-round with the round's stored pseudo-labels, and a run killed while predicting
      resumes with the missing cases (the checkpoint it resumes from is the network that predicted the others).
    * Validation, ``checkpoint_best`` and the final validation use the labeled validation cases only.
    """

    uses_unlabeled_batches = False
    pseudo_label_rounds = 2
    pseudo_label_filter: str | None = None
    pseudo_label_confidence = 0.9
    pseudo_label_mirroring = True
    train_terms = ("pseudo_label_round",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.require("pseudo_label_rounds", self.num_epochs >= self.pseudo_label_rounds + 1,
                     f"at most num_epochs - 1 = {self.num_epochs - 1} (every round needs an epoch)")
        self.round_starts = round_start_epochs(self.num_epochs, self.pseudo_label_rounds)
        self.active_round = 0

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("pseudo_label_rounds", isinstance(self.pseudo_label_rounds, int) and self.pseudo_label_rounds >= 0,
                     "an integer >= 0")
        self.require("pseudo_label_filter", self.pseudo_label_filter in PSEUDO_LABEL_FILTERS,
                     f"one of {PSEUDO_LABEL_FILTERS}")
        self.require("pseudo_label_confidence", 0 <= self.pseudo_label_confidence <= 1, "in [0, 1]")
        self.require("pseudo_label_mirroring", isinstance(self.pseudo_label_mirroring, bool), "True or False")

    # ------------------------------------------------------------------ labels and data
    def _use_dense_labels_if_possible(self) -> None:
        """The voxel filter writes the ignore label into pseudo-labels, so nnU-Net's sparse-label training stays."""
        if self.pseudo_label_filter == "voxel":
            self.print_to_log_file("pseudo_label_filter 'voxel': using nnU-Net's sparse-label training.")
            return
        super()._use_dense_labels_if_possible()

    def pseudo_label_store(self, round_index: int) -> PseudoLabelStore:
        return PseudoLabelStore(Path(self.output_folder) / "pseudo_labels" / f"round_{round_index}")

    def get_tr_and_val_datasets(self):
        """nnU-Net's datasets; from round 1 on the training dataset also holds the round's pseudo-labeled cases."""
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.active_round == 0:
            return dataset_tr, dataset_val
        store = self.pseudo_label_store(self.active_round)
        keys = self.unlabeled_keys
        if self.pseudo_label_filter == "case":
            keys = store.confident_keys(keys, self.pseudo_label_confidence)
        self.print_to_log_file(f"Round {self.active_round}: training on {len(dataset_tr.identifiers)} labeled and "
                               f"{len(keys)} of {len(self.unlabeled_keys)} pseudo-labeled cases")
        unlabeled = self.dataset_class(self.preprocessed_dataset_folder, keys)
        return PseudoLabeledDataset(dataset_tr, unlabeled, store), dataset_val

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        return optimizer, RoundwisePolyLRScheduler(optimizer, self.initial_lr, self.round_starts, self.num_epochs)

    # ------------------------------------------------------------------ rounds
    def on_train_start(self):
        if self.current_epoch == 0 and self.local_rank == 0:  # a new training: pseudo-labels of an old one go
            shutil.rmtree(Path(self.output_folder) / "pseudo_labels", ignore_errors=True)
        super().on_train_start()
        self.print_to_log_file(f"Pseudo-label rounds start at epochs {self.round_starts}")

    def on_epoch_start(self):
        round_index = round_of_epoch(self.current_epoch, self.round_starts)
        if round_index != self.active_round:
            self._enter_round(round_index)
        super().on_epoch_start()

    def _enter_round(self, round_index: int) -> None:
        """Make (at the round's first epoch) or find (on resume) the round's pseudo-labels, then train on them."""
        store = self.pseudo_label_store(round_index)
        if self.current_epoch == self.round_starts[round_index]:
            self._predict_pseudo_labels(store)
        missing = store.missing(self.unlabeled_keys)
        if missing:
            raise UserError(f"{len(missing)} pseudo-labels of round {round_index} are missing from {store.folder} "
                            f"(e.g. {missing[0]}); they were predicted by the network of epoch "
                            f"{self.round_starts[round_index]}, which no checkpoint holds any more. Train this fold "
                            f"again without --c.")
        self.active_round = round_index
        self._rebuild_dataloaders()

    @torch.inference_mode()
    def _predict_pseudo_labels(self, store: PseudoLabelStore) -> None:
        """Predict the cases without a pseudo-label (under DDP, each rank a share)."""
        self.print_to_log_file(f"Predicting the missing pseudo-labels of {len(self.unlabeled_keys)} unlabeled cases "
                               f"into {store.folder}")
        network = unwrap_network(self.network)  # DDP's buffer broadcast would wait for ranks with fewer cases
        self.set_deep_supervision_enabled(False)
        network.eval()
        predictor = self._pseudo_label_predictor(network)
        dataset = self.dataset_class(self.preprocessed_dataset_folder, self.unlabeled_keys)
        threshold = self.pseudo_label_confidence if self.pseudo_label_filter == "voxel" else None

        def make(key: str) -> tuple[np.ndarray, dict, float]:
            data = torch.from_numpy(np.array(dataset.load_case(key)[0][:]))
            segmentation, mean_confidence = pseudo_label(predictor.predict_sliding_window_return_logits(data),
                                                         self.label_manager, threshold)
            return segmentation, foreground_locations(segmentation, self.label_manager), mean_confidence

        write_missing_pseudo_labels(store, self.unlabeled_keys, make)
        self.set_deep_supervision_enabled(self.enable_deep_supervision)
        network.train()

    def _pseudo_label_predictor(self, network: torch.nn.Module) -> nnUNetPredictor:
        """nnU-Net's predictor as its final validation sets it up, around ``network``."""
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.pseudo_label_mirroring,
                                    perform_everything_on_device=True, device=self.device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, type(self).__name__, self.inference_allowed_mirroring_axes)
        return predictor

    def _rebuild_dataloaders(self) -> None:
        finish_loaders(self.dataloader_train, self.dataloader_val)
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()

    # ------------------------------------------------------------------ training
    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """nnU-Net's loss on a batch of labeled and (from round 1 on) pseudo-labeled crops."""
        outputs = self.training_forward(self.network, labeled["data"])
        return {"loss": self.loss(outputs, labeled["target"]),
                "pseudo_label_round": torch.tensor(float(self.active_round))}


class nnUNetTrainerSSGNet_tvMFDice(nnUNetTrainerSSGNet, nnUNetTrainer_tvMFDice):
    """SSGNet as published: pseudo-label rounds trained with the adaptive t-vMF Dice loss (+ CE)."""


class nnUNetTrainerSSGNet_1round(nnUNetTrainerSSGNet):
    """One refinement round (the rounds ablation: 0 rounds is nnU-Net on the labeled cases)."""

    pseudo_label_rounds = 1


class nnUNetTrainerSSGNet_tvMFDice_0rounds(nnUNetTrainerSSGNet_tvMFDice):
    """The adaptive t-vMF Dice loss on the labeled cases only (round 0), for the loss ablation on a semi dataset."""

    pseudo_label_rounds = 0
