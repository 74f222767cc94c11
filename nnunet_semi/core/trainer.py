"""The base of every semi-supervised trainer: nnU-Net's trainer, fed a labeled and an unlabeled batch per step."""
from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist

from nnunet_semi.core.hyperparameters import ClassHyperparameters
from nnunet_semi.core.logging import SemiLocalLogger
from nnunet_semi.core.teacher import EMATeacher, unwrap_network
from nnunet_semi.core.unlabeled import (
    UnlabeledViews,
    find_unlabeled_cases,
    labeled_cases_contain_ignore,
    nnUNetUnlabeledDataLoader,
    split_views,
)
from nnunet_semi.files import write_atomic

Batch = dict[str, torch.Tensor | list[torch.Tensor]]


def split_batch_outputs(outputs, n: int):
    """Network outputs for a concatenated batch -> (first n samples, the rest), per deep-supervision scale."""
    if isinstance(outputs, (list, tuple)):
        return [o[:n] for o in outputs], [o[n:] for o in outputs]
    return outputs[:n], outputs[n:]


def full_resolution(outputs_or_targets):
    """The full-resolution entry of nnU-Net outputs or targets (the first one under deep supervision)."""
    return outputs_or_targets[0] if isinstance(outputs_or_targets, (list, tuple)) else outputs_or_targets


def mean_over_workers(values) -> float:
    """Mean of per-step values over all DDP workers (as nnU-Net averages its train loss), or locally."""
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, np.asarray(values))
        values = np.concatenate([np.ravel(v) for v in gathered])
    return float(np.mean(values))


class nnUNetTrainerSemi(ClassHyperparameters, nnUNetTrainer):
    """nnU-Net's trainer with unlabeled data; subclasses implement :meth:`compute_train_losses`.

    * Unlabeled cases are the training cases whose label is entirely the ignore label (see README). They are
      always trained on and never validated: cases of a validation fold that are unlabeled move to training.
    * Each step draws a labeled batch (nnU-Net's loader, unchanged) and an unlabeled batch (nnU-Net's loader and
      augmentation in background workers, ``unlabeled_views`` voxel-aligned views per crop).
    * The ignore label marks unlabeled cases only; when no labeled case contains ignore voxels, the labeled part
      trains exactly as vanilla nnU-Net does on the labeled-only twin dataset (same loss, same crop sampling).
      Labeled cases with ignore voxels (sparse annotations) keep nnU-Net's ignore-label handling.
    * ``ema_decay`` set: an EMA teacher of the student, updated after every optimiser step.
    * Checkpoints keep nnU-Net's layout; ``network_weights`` are the student's, so stock ``nnUNetv2_predict``
      uses the network whose pseudo-Dice, best checkpoint and final validation nnU-Net reports. The teacher and
      step counter live under ``semi_state``.
    * ``train_terms`` are logged once per epoch with nnU-Net's logger (checkpointed, shown in progress.png).
    """

    unlabeled_batch_ratio: float = 1.0
    unlabeled_views: int = 1
    ema_decay: float | None = None
    train_terms: tuple[str, ...] = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise RuntimeError(f"{self.__class__.__name__} does not support cascaded configurations "
                               f"({configuration}); use 2d or 3d_fullres.")
        self.teacher: EMATeacher | None = None
        self.global_step = 0
        self.dataloader_unlabeled = None
        self.logger.local_logger = SemiLocalLogger(self.logger.local_logger, self.train_terms)

    # ------------------------------------------------------------------ cases and data
    @functools.cached_property
    def unlabeled_keys(self) -> list[str]:
        """Every unlabeled case of the preprocessed dataset, read once from the cases' properties."""
        if "ignore" not in self.dataset_json["labels"]:
            return []
        folder = self.preprocessed_dataset_folder
        return sorted(find_unlabeled_cases(folder, infer_dataset_class(folder).get_identifiers(folder)))

    def do_split(self):
        """nnU-Net's split restricted to labeled cases; every unlabeled case of the dataset is trained on (also
        unlabeled cases added after the split was written, e.g. synthetic ones)."""
        tr_keys, val_keys = super().do_split()
        unlabeled = set(self.unlabeled_keys)
        moved = sorted(k for k in val_keys if k in unlabeled)
        if moved:
            self.print_to_log_file(f"WARNING: {len(moved)} unlabeled cases were in validation fold {self.fold}; "
                                   f"they are trained on instead. Write semi-supervised splits with "
                                   f"'nnunet-semi make-semi' or 'nnunet-semi splits'.")
        labeled_tr = [k for k in tr_keys if k not in unlabeled]
        labeled_val = [k for k in val_keys if k not in unlabeled]
        if not self.unlabeled_keys:
            raise RuntimeError(f"{self.__class__.__name__} needs unlabeled cases (label files that are entirely the "
                               f"ignore label) and found none in {self.preprocessed_dataset_folder}.")
        if not labeled_tr or not labeled_val:
            raise RuntimeError(f"Fold {self.fold} has {len(labeled_tr)} labeled training and {len(labeled_val)} "
                               f"labeled validation cases; both must be non-empty.")
        return labeled_tr, labeled_val

    def _use_dense_labels_if_possible(self) -> None:
        """Drop the ignore label from the training label manager when it only marks unlabeled cases."""
        ignore = self.label_manager.ignore_label
        if ignore is None:
            return
        labeled_tr, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, labeled_tr)
        if labeled_cases_contain_ignore(dataset, ignore):
            self.print_to_log_file("Labeled cases contain ignore voxels: using nnU-Net's sparse-label training.")
            return
        labels = {k: v for k, v in self.dataset_json["labels"].items() if k != "ignore"}
        self.label_manager = self.plans_manager.get_label_manager({**self.dataset_json, "labels": labels})

    @property
    def unlabeled_batch_size(self) -> int:
        return max(1, round(self.batch_size * self.unlabeled_batch_ratio))

    def get_dataloaders(self):
        dataloader_train, dataloader_val = super().get_dataloaders()
        self.dataloader_unlabeled = self._build_unlabeled_dataloader()
        self.print_to_log_file(f"Unlabeled cases: {len(self.unlabeled_keys)}, unlabeled batch size "
                               f"{self.unlabeled_batch_size}, views per crop {self.unlabeled_views}")
        return dataloader_train, dataloader_val

    def _build_unlabeled_dataloader(self):
        patch_size = self.configuration_manager.patch_size
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        pipeline = self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            foreground_labels=self.label_manager.foreground_labels)
        loader = nnUNetUnlabeledDataLoader(
            self.dataset_class(self.preprocessed_dataset_folder, self.unlabeled_keys), self.unlabeled_batch_size,
            initial_patch_size, patch_size, self.label_manager, UnlabeledViews(pipeline, self.unlabeled_views))
        num_processes = get_allowed_n_proc_DA()
        if num_processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes, max(6, num_processes // 2), None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def next_unlabeled_views(self) -> tuple[torch.Tensor, ...]:
        """The next unlabeled batch on the device, as ``unlabeled_views`` tensors of shape (B, C, *patch)."""
        data = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)
        return split_views(data, self.unlabeled_views)

    # ------------------------------------------------------------------ training
    def initialize(self):
        if not self.was_initialized:
            self._use_dense_labels_if_possible()
        super().initialize()
        if self.ema_decay is not None:
            self.teacher = self.new_teacher()

    def new_teacher(self) -> EMATeacher:
        """An EMA teacher initialised from the current student, returning full-resolution logits only."""
        teacher = EMATeacher(self.network, self.ema_decay)
        teacher.module.decoder.deep_supervision = False
        return teacher

    def autocast(self):
        """nnU-Net's mixed-precision policy: autocast on CUDA only."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes, or sigmoid per region for region-based datasets (float32 for stability)."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def forward_labeled_and_unlabeled(self, labeled: torch.Tensor, unlabeled: torch.Tensor):
        """One student forward pass on both batches (one pass keeps DDP's gradient hooks simple).

        Returns the labeled outputs in nnU-Net's format (a list over deep-supervision scales if enabled) and the
        full-resolution logits of the unlabeled batch.
        """
        labeled_outputs, unlabeled_outputs = split_batch_outputs(self.network(torch.cat((labeled, unlabeled))),
                                                                 labeled.shape[0])
        return labeled_outputs, full_resolution(unlabeled_outputs)

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The step's losses from a labeled batch (``data``, ``target`` as nnU-Net gives them) and the unlabeled
        batch's views: ``'loss'`` (optimised) plus every name in ``train_terms`` (logged)."""
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict:
        labeled = {"data": batch["data"].to(self.device, non_blocking=True),
                   "target": [t.to(self.device, non_blocking=True) for t in batch["target"]]
                   if isinstance(batch["target"], list) else batch["target"].to(self.device, non_blocking=True)}
        unlabeled = self.next_unlabeled_views()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            terms = self.compute_train_losses(labeled, unlabeled)
        self._backward_and_step(terms["loss"])
        self.global_step += 1
        self.after_optimizer_step()
        return {k: np.asarray(v.detach().float().cpu() if torch.is_tensor(v) else v, dtype=np.float32)
                for k, v in terms.items()}

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (``global_step`` already counts it): updates the EMA teacher."""
        if self.teacher is not None:
            self.teacher.update(self.network, self.global_step)

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        """nnU-Net's update: (scaled) backward, gradient clipping at 12, optimiser step."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

    def total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        for term in self.train_terms:
            self.logger.log(term, mean_over_workers(outputs[term]), self.current_epoch)

    def on_epoch_end(self):
        if self.train_terms:
            self.print_to_log_file(", ".join(
                f"{t} {np.round(self.logger.get_value(t, step=-1), decimals=4)}" for t in self.train_terms))
        super().on_epoch_end()

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            with contextlib.redirect_stdout(io.StringIO()):
                self.dataloader_unlabeled._finish()

    # ------------------------------------------------------------------ checkpoints
    def semi_state_dict(self) -> dict:
        """Extra training state saved under ``semi_state``; subclasses extend it."""
        state = {"global_step": self.global_step}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_semi_state_dict(self, state: dict) -> None:
        self.global_step = state["global_step"]
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])

    def save_checkpoint(self, filename: str) -> None:
        """nnUNetTrainer.save_checkpoint's layout plus ``semi_state``, written to a temporary name, then renamed."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": unwrap_network(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "semi_state": self.semi_state_dict(),
        }
        write_atomic(Path(filename), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, filename_or_checkpoint: str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        if "semi_state" in checkpoint:
            self.load_semi_state_dict(checkpoint["semi_state"])
