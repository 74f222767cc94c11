"""The base of every semi-supervised trainer: nnU-Net's trainer, fed a labeled and an unlabeled batch per step."""
from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nnunet_semi.core.frozen import keep_frozen_parts_out_of_ddp, trainable_parameters
from nnunet_semi.core.hyperparameters import ClassHyperparameters, split_budget
from nnunet_semi.core.logging import SemiLocalLogger
from nnunet_semi.core.rampup import RAMPUPS
from nnunet_semi.core.teacher import EMATeacher, unwrap_network
from nnunet_semi.core.unlabeled import (
    UnlabeledViews,
    find_unlabeled_cases,
    labeled_cases_contain_ignore,
    nnUNetUnlabeledDataLoader,
    split_views,
)
from nnunet_semi.errors import UserError
from nnunet_semi.files import remove_stale, temporary_files, write_atomic

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
    """Mean of per-step values over all DDP workers (as nnU-Net averages its train loss), or locally. NaN entries
    (steps where a term is undefined, e.g. during a warm-up) are skipped; all-NaN gives NaN."""
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, np.asarray(values))
        values = np.concatenate([np.ravel(v) for v in gathered])
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def finish_loaders(*loaders) -> None:
    """Stop the background workers of nnU-Net data loaders (as nnU-Net's ``on_train_end`` does, quietly); loaders
    without workers are left alone."""
    with contextlib.redirect_stdout(io.StringIO()):
        for loader in loaders:
            if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                loader._finish()


class ScaledPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule; a parameter group with ``lr_scale`` gets that multiple of the scheduled rate."""

    def step(self, current_step=None):
        super().step(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def wrap_for_ddp(module: nn.Module, device: torch.device, local_rank: int) -> nn.Module:
    """What nnU-Net does to its network under DDP (SyncBatchNorm, then DistributedDataParallel); on CPU (gloo, our
    tests) without SyncBatchNorm, which DDP supports on GPUs only."""
    keep_frozen_parts_out_of_ddp(module)
    if device.type != "cuda":
        return DistributedDataParallel(module)
    return DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(module), device_ids=[local_rank])


class nnUNetTrainerSemi(ClassHyperparameters, nnUNetTrainer):
    """nnU-Net's trainer with unlabeled data; subclasses implement :meth:`compute_train_losses`.

    Data:

    * Unlabeled cases are the training cases whose label is entirely the ignore label (see README). They are
      always trained on and never validated: cases of a validation fold that are unlabeled move to training.
    * Each step draws a labeled batch (nnU-Net's loader, unchanged) and, from ``unlabeled_start_step`` on (after
      the supervised warm-up, ``warmup_fraction`` of all iterations; none by default), an
      unlabeled batch (nnU-Net's loader and augmentation in background workers, ``unlabeled_views`` voxel-aligned
      views per crop, the first ``unlabeled_weak_views`` of them without photometric transforms; before that step
      :meth:`compute_train_losses` receives an empty tuple).
    * The ignore label marks unlabeled cases only; when no labeled case contains ignore voxels, the labeled part
      trains exactly as vanilla nnU-Net does on the labeled-only twin dataset (same loss, same crop sampling).
      Labeled cases with ignore voxels (sparse annotations) keep nnU-Net's ignore-label handling.

    Extension points (a method is one module that overrides only these):

    * :meth:`compute_train_losses` -> ``{'loss': ..., <train_terms>: ...}``; ``train_terms`` are logged once per
      epoch with nnU-Net's logger (checkpointed, W&B, an extra panel in progress.png).
    * :meth:`build_extra_modules` -> ``{name: module}`` for trainable modules outside the exported network
      (projection heads, CPS's second network, class proxies). The base builds them on the device, compiles them
      when nnU-Net compiles, DDP-wraps them, optimises them with the network (learning rate times
      ``extra_module_lr_scale[name]``, default 1, on nnU-Net's poly schedule), clips their gradients with the
      network's, switches them between train and eval with it and checkpoints them under ``semi_state``. Call
      them through ``self.extra_modules[name]`` (the DDP-wrapped module).
    * ``build_network_architecture`` as a classmethod that wraps nnU-Net's planned network (see
      :mod:`nnunet_semi.core.network`): modules needed at inference live in ``network_weights`` and
      ``nnUNetv2_predict`` rebuilds them.
    * :meth:`load_pretrained_parts` loads pretrained weights into parts of the built network before the optimiser
      exists; :class:`~nnunet_semi.core.frozen.FrozenPart` keeps a part frozen (no gradient, not optimised, shared
      by the EMA teacher, optionally kept out of checkpoints).
    * ``ema_decay`` set: an EMA teacher of the student, built from the student at ``teacher_start_step`` (at the
      start of training by default, i.e. after ``-pretrained_weights`` were loaded) and updated after every later
      optimiser step; :meth:`after_optimizer_step` is the per-step hook.
    * ``exported_network``: ``'student'`` (default) or ``'teacher'``: the network written as ``network_weights``,
      validated every epoch (pseudo Dice, ``checkpoint_best``) and in nnU-Net's final validation, so the numbers
      nnU-Net prints belong to the network ``nnUNetv2_predict`` uses. The other network is kept in ``semi_state``.
    * ``uses_unlabeled_batches = False``: no unlabeled loader; the method uses the unlabeled cases in its own way
      (SSGNet's pseudo-label rounds add them to nnU-Net's training dataset, see :meth:`get_tr_and_val_datasets`).
      ``reads_unlabeled_cases = False`` as well: a supervised trainer (``nnUNetTrainerEMA``) that runs on any
      nnU-Net dataset, and on a semi-supervised one trains on its labeled cases only.
    * :meth:`validate_hyperparameters` checks class attributes at construction.

    Checkpoints keep nnU-Net's layout plus ``semi_state`` (step counter, teacher, extra modules, which network was
    exported, :meth:`recorded_settings`) and are written atomically. ``checkpoint_latest`` is written every epoch
    (``save_every = 1``) so that ``--c`` resumes where training stopped.
    """

    unlabeled_batch_ratio: float = 1.0
    warmup_fraction: float = 0.0
    unlabeled_views: int = 1
    unlabeled_weak_views: int = 0
    ema_decay: float | None = None
    exported_network: str = "student"
    extra_module_lr_scale: dict[str, float] = {}
    train_terms: tuple[str, ...] = ()
    uses_unlabeled_batches: bool = True
    reads_unlabeled_cases: bool = True
    save_every = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise RuntimeError(f"{self.__class__.__name__} does not support cascaded configurations "
                               f"({configuration}); use 2d or 3d_fullres.")
        self.teacher: EMATeacher | None = None
        self.extra_modules: dict[str, nn.Module] = {}
        self.global_step = 0
        self.dataloader_unlabeled = None
        self.logger.local_logger = SemiLocalLogger(self.logger.local_logger, self.train_terms)

    def validate_hyperparameters(self) -> None:
        super().validate_hyperparameters()
        self.require("unlabeled_batch_ratio", self.unlabeled_batch_ratio > 0, "> 0")
        self.require("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)")
        self.require("unlabeled_views", isinstance(self.unlabeled_views, int) and self.unlabeled_views >= 1,
                     "an integer >= 1")
        self.require("unlabeled_weak_views", isinstance(self.unlabeled_weak_views, int) and
                     0 <= self.unlabeled_weak_views <= self.unlabeled_views, "an integer in [0, unlabeled_views]")
        self.require("ema_decay", self.ema_decay is None or 0 <= self.ema_decay < 1, "None or in [0, 1)")
        self.require("exported_network", self.exported_network in ("student", "teacher"), "'student' or 'teacher'")
        self.require("exported_network", self.exported_network == "student" or self.ema_decay is not None,
                     "'student' for a trainer without EMA teacher (ema_decay is None)")
        self.require("extra_module_lr_scale", all(v > 0 for v in self.extra_module_lr_scale.values()),
                     "a dict of positive learning-rate multipliers")
        self.require("reads_unlabeled_cases", self.reads_unlabeled_cases or not self.uses_unlabeled_batches,
                     "True for a trainer that draws unlabeled batches (uses_unlabeled_batches)")

    # ------------------------------------------------------------------ cases and data
    @functools.cached_property
    def case_keys(self) -> list[str]:
        """Every training case of the preprocessed dataset."""
        folder = self.preprocessed_dataset_folder
        return infer_dataset_class(folder).get_identifiers(folder)

    @functools.cached_property
    def unlabeled_keys(self) -> list[str]:
        """Every unlabeled case of the preprocessed dataset, read once from the cases' properties."""
        if "ignore" not in self.dataset_json["labels"]:
            return []
        return sorted(find_unlabeled_cases(self.preprocessed_dataset_folder, self.case_keys))

    def do_split(self):
        """nnU-Net's split restricted to labeled cases; every unlabeled case of the dataset is trained on (also
        unlabeled cases added after the split was written, e.g. synthetic ones). Checked before nnU-Net's split,
        which would write a random ``splits_final.json`` for a dataset without labeled cases. A trainer that does
        not read unlabeled cases gets nnU-Net's split on a dataset without them."""
        if not self.unlabeled_keys:
            if not self.reads_unlabeled_cases:
                return super().do_split()
            raise RuntimeError(f"{self.__class__.__name__} needs unlabeled cases (label files that are entirely the "
                               f"ignore label) and found none in {self.preprocessed_dataset_folder}.")
        if set(self.case_keys) <= set(self.unlabeled_keys):
            raise UserError(f"{self.plans_manager.dataset_name} has no labeled case: all "
                            f"{len(self.unlabeled_keys)} training cases are unlabeled (label files entirely the "
                            f"ignore label). Keep the labels of some cases, e.g. with 'nnunet-semi make-semi'.")
        tr_keys, val_keys = super().do_split()
        unlabeled = set(self.unlabeled_keys)
        moved = sorted(k for k in val_keys if k in unlabeled)
        if moved:
            fate = "they are trained on instead" if self.reads_unlabeled_cases else "this trainer leaves them out"
            self.print_to_log_file(f"WARNING: {len(moved)} unlabeled cases were in validation fold {self.fold}; "
                                   f"{fate}. Write semi-supervised splits with 'nnunet-semi make-semi' or "
                                   f"'nnunet-semi splits'.")
        labeled_tr = [k for k in tr_keys if k not in unlabeled]
        labeled_val = [k for k in val_keys if k not in unlabeled]
        if not labeled_tr or not labeled_val:
            raise RuntimeError(f"Fold {self.fold} has {len(labeled_tr)} labeled training and {len(labeled_val)} "
                               f"labeled validation cases; both must be non-empty.")
        return labeled_tr, labeled_val

    def _refuse_mask_for_norm(self) -> None:
        """nnU-Net z-scores channels with ``use_mask_for_norm`` inside the nonzero mask, which preprocessing marks
        in the label (-1 outside) only where the label is background; an all-ignore unlabeled case gets no mask, so
        it would be normalised over the whole image while labeled cases use the mask. Refuse instead of training
        on two different intensity scales."""
        channels = [c for c, masked in enumerate(self.configuration_manager.use_mask_for_norm) if masked]
        if channels and self.unlabeled_keys and self.reads_unlabeled_cases:
            raise UserError(
                f"The plans of configuration '{self.configuration_name}' set use_mask_for_norm for channel(s) "
                f"{channels} (nnU-Net does this for images with a zero background, e.g. skull-stripped MRI). "
                f"Unlabeled cases carry no nonzero mask, so they would be normalised differently from labeled ones. "
                f"Set \"use_mask_for_norm\" to false for every channel of this configuration in "
                f"{self.preprocessed_dataset_folder_base}/{self.plans_manager.plans_name}.json (or in a copy under "
                f"another plans name, -p), preprocess again (nnunet-semi plan) and retrain the baseline with the same "
                f"plans.")

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
        if not self.uses_unlabeled_batches:
            return dataloader_train, dataloader_val
        self.dataloader_unlabeled = self._build_unlabeled_dataloader()
        self.print_to_log_file(f"Unlabeled cases: {len(self.unlabeled_keys)}, unlabeled batch size "
                               f"{self.unlabeled_batch_size}, views per crop {self.unlabeled_views} "
                               f"({self.unlabeled_weak_views} without photometric augmentation)")
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
            initial_patch_size, patch_size, self.label_manager,
            UnlabeledViews(pipeline, self.unlabeled_views, self.unlabeled_weak_views))
        num_processes = get_allowed_n_proc_DA()
        if num_processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes, max(6, num_processes // 2), None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def next_unlabeled_views(self) -> tuple[torch.Tensor, ...]:
        """The next unlabeled batch on the device, as ``unlabeled_views`` tensors of shape (B, C, *patch)."""
        data = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)
        return split_views(data, self.unlabeled_views)

    # ------------------------------------------------------------------ networks and optimiser
    def build_extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules outside the exported network, by name (see the class docstring). None by default."""
        return {}

    def load_pretrained_parts(self, network: nn.Module) -> None:
        """Load pretrained weights into parts of the freshly built (unwrapped) network, before the optimiser is
        created. Parts wrapped in ``FrozenPart`` stay frozen. Nothing by default."""

    def configure_optimizers(self):
        """nnU-Net's optimiser and poly schedule over the trainable parameters of the network and the extra
        modules (nnU-Net calls this once, after building and compiling the network and before wrapping it in DDP)."""
        self.load_pretrained_parts(unwrap_network(self.network))
        keep_frozen_parts_out_of_ddp(self.network)  # nnU-Net wraps the network in DDP after this
        self.extra_modules = self._build_extra_modules()
        optimizer, _ = super().configure_optimizers()
        network_group = optimizer.param_groups[0]
        network_group["params"] = [p for p in network_group["params"] if p.requires_grad]
        for name, module in self.extra_modules.items():
            optimizer.add_param_group({"params": list(trainable_parameters(module)),
                                       "lr_scale": self.extra_module_lr_scale.get(name, 1.0)})
        return optimizer, ScaledPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_extra_modules(self) -> dict[str, nn.Module]:
        modules = self.build_extra_modules()
        unknown = set(self.extra_module_lr_scale) - set(modules)
        if unknown:
            raise RuntimeError(f"{type(self).__name__}.extra_module_lr_scale names unknown modules {sorted(unknown)}; "
                               f"the extra modules are {sorted(modules)}.")
        compiled = self._do_i_compile()
        return {name: torch.compile(m.to(self.device)) if compiled else m.to(self.device)
                for name, m in modules.items()}

    def initialize(self):
        if not self.was_initialized:
            self._refuse_mask_for_norm()
            self._use_dense_labels_if_possible()
        super().initialize()
        if self.is_ddp:
            self.extra_modules = {name: wrap_for_ddp(m, self.device, self.local_rank) if any(
                trainable_parameters(m)) else m for name, m in self.extra_modules.items()}

    def optimised_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser updates (the network's and the extra modules' trainable parameters): what gradient
        clipping covers."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def set_deep_supervision_enabled(self, enabled: bool):
        """nnU-Net's switch, applied to the network and to every extra module that is a segmentation network with a
        deep-supervision decoder (e.g. CPS's second network); networks without one (SemiGDA's) are left alone."""
        for module in (self.network, *self.extra_modules.values()):
            decoder = getattr(unwrap_network(module), "decoder", None)
            if hasattr(decoder, "deep_supervision"):
                decoder.deep_supervision = enabled

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for module in self.extra_modules.values():
            module.train()

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        for module in self.extra_modules.values():
            module.eval()

    # ------------------------------------------------------------------ teacher and export
    @property
    def teacher_start_step(self) -> int:
        """Optimiser steps before the EMA teacher is built from the student (0: at the start of training)."""
        return 0

    @property
    def warmup_steps(self) -> int:
        """Optimiser steps of the supervised warm-up: ``warmup_fraction`` of the budget, so it scales with it."""
        return self.budget_steps(self.warmup_fraction)

    @property
    def unlabeled_start_step(self) -> int:
        """Optimiser steps before unlabeled batches are drawn: the warm-up uses labeled data only."""
        return self.warmup_steps

    def new_teacher(self) -> EMATeacher:
        """An EMA teacher initialised from the current student, returning full-resolution logits only."""
        teacher = EMATeacher(self.network, self.ema_decay)
        teacher.module.decoder.deep_supervision = False
        return teacher

    def _maybe_start_teacher(self) -> None:
        if self.ema_decay is None or self.teacher is not None or self.global_step < self.teacher_start_step:
            return
        self.teacher = self.new_teacher()
        if self.global_step > 0:
            self.print_to_log_file(f"EMA teacher initialised from the student after {self.global_step} iterations.")

    def exported_name(self, has_teacher: bool) -> str:
        """The network actually exported: the student until a teacher exists, whatever ``exported_network`` says."""
        return "teacher" if self.exported_network == "teacher" and has_teacher else "student"

    @property
    def exports_teacher(self) -> bool:
        return self.exported_name(self.teacher is not None) == "teacher"

    @contextlib.contextmanager
    def exported_network_in_place(self):
        """Temporarily make ``self.network`` the exported network (the teacher if ``exported_network='teacher'``),
        with the student's deep-supervision setting, so nnU-Net's validation code validates what is exported."""
        if not self.exports_teacher:
            yield
            return
        student, teacher = self.network, self.teacher.module
        teacher.decoder.deep_supervision = unwrap_network(student).decoder.deep_supervision
        self.network = teacher
        try:
            yield
        finally:
            self.network = student
            teacher.decoder.deep_supervision = False

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:  # one training per fold folder: its temporary files are leftovers of a kill
            remove_stale(temporary_files(Path(self.output_folder)), 0, "a temporary checkpoint or plot")
        if self.global_step == 0:
            self.teacher = None  # built now, from the student as it starts (e.g. with -pretrained_weights)
        self._maybe_start_teacher()
        self.print_to_log_file(f"Exported network (network_weights, validation): {self.exported_network}")

    def validation_step(self, batch: dict) -> dict:
        with self.exported_network_in_place():
            return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        with self.exported_network_in_place():
            super().perform_actual_validation(save_probabilities)

    def require_label_based(self, reason: str) -> None:
        """Refuse a region-based dataset (called from ``initialize``) for a method that needs one class per voxel;
        ``reason`` says why, in the error."""
        if self.label_manager.has_regions:
            raise UserError(f"{type(self).__name__} needs a label-based dataset: {reason}, and "
                            f"{self.plans_manager.dataset_name} defines regions.")

    # ------------------------------------------------------------------ training
    def autocast(self):
        """nnU-Net's mixed-precision policy: autocast on CUDA only."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes, or sigmoid per region for region-based datasets (float32 for stability)."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.label_manager.has_regions else torch.softmax(logits, 1)

    def training_forward(self, network: nn.Module, x: torch.Tensor):
        """A training forward pass of ``network`` (the student, or another trained network such as CPS's second);
        the place where a method that needs more than the outputs (e.g. token embeddings) gets them."""
        return network(x)

    def forward_labeled_and_unlabeled(self, labeled: torch.Tensor, unlabeled: torch.Tensor,
                                      network: nn.Module | None = None):
        """One forward pass of the student (or ``network``) on both batches (one pass keeps DDP's gradient hooks
        simple).

        Returns the labeled outputs in nnU-Net's format (a list over deep-supervision scales if enabled) and the
        full-resolution logits of the unlabeled batch.
        """
        network = self.network if network is None else network
        outputs = self.training_forward(network, torch.cat((labeled, unlabeled)))
        labeled_outputs, unlabeled_outputs = split_batch_outputs(outputs, labeled.shape[0])
        return labeled_outputs, full_resolution(unlabeled_outputs)

    def compute_train_losses(self, labeled: Batch, unlabeled: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The step's losses from a labeled batch (``data``, ``target`` as nnU-Net gives them) and the unlabeled
        batch's views (empty before ``unlabeled_start_step``): ``'loss'`` (optimised) plus every name in
        ``train_terms`` (logged)."""
        raise NotImplementedError

    def supervised_only_losses(self, labeled: Batch) -> dict[str, torch.Tensor]:
        """L = L_s (nnU-Net's loss on the labeled batch) for steps without unlabeled views (the warm-up, or a
        variant without unlabeled batches); every other term of ``train_terms`` is logged as NaN (not computed)."""
        loss_supervised = self.loss(self.network(labeled["data"]), labeled["target"])
        nan = torch.tensor(float("nan"))
        return {"loss": loss_supervised, **{term: nan for term in self.train_terms},
                "loss_supervised": loss_supervised}

    def train_step(self, batch: dict) -> dict:
        labeled = {"data": batch["data"].to(self.device, non_blocking=True),
                   "target": [t.to(self.device, non_blocking=True) for t in batch["target"]]
                   if isinstance(batch["target"], list) else batch["target"].to(self.device, non_blocking=True)}
        unlabeled = self.next_unlabeled_views() if self.uses_unlabeled_batches and \
            self.global_step >= self.unlabeled_start_step else ()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            terms = self.compute_train_losses(labeled, unlabeled)
        self._backward_and_step(terms["loss"])
        self.global_step += 1
        self.after_optimizer_step()
        return {k: np.asarray(v.detach().float().cpu() if torch.is_tensor(v) else v, dtype=np.float32)
                for k, v in terms.items()}

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (``global_step`` already counts it): updates the EMA teacher (its
        k-th update after it was built uses the warmed-up decay of update k), or builds it at
        ``teacher_start_step``."""
        if self.teacher is not None:
            self.teacher.update(self.network, self.global_step - self.teacher_start_step)
        else:
            self._maybe_start_teacher()

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        """nnU-Net's update: (scaled) backward, gradient clipping at 12 over all trainable parameters, step."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.optimised_parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.optimised_parameters(), 12)
            self.optimizer.step()

    def total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def budget_steps(self, fraction: float) -> int:
        """Optimiser steps in ``fraction`` of the training budget: how budget-relative schedules become steps."""
        return round(fraction * self.total_iterations())

    def ramped_weight(self, weight: float, rampup: str, fraction: float) -> float:
        """``weight`` times the ramp-up ``rampup`` (a key of ``RAMPUPS``) over the first ``fraction`` of training,
        at the current step."""
        return weight * RAMPUPS[rampup](self.global_step, self.budget_steps(fraction))

    def require_rampup(self, rampup_attribute: str, fraction_attribute: str) -> None:
        """Validate a ramp-up hyperparameter pair (a ramp-up name and the fraction of training it spans)."""
        self.require(rampup_attribute, getattr(self, rampup_attribute) in RAMPUPS, f"one of {sorted(RAMPUPS)}")
        self.require(fraction_attribute, 0 <= getattr(self, fraction_attribute) <= 1, "in [0, 1]")

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
        finish_loaders(self.dataloader_unlabeled)

    # ------------------------------------------------------------------ checkpoints
    def semi_state_dict(self) -> dict:
        """Extra training state saved under ``semi_state``; subclasses extend it."""
        state = {"global_step": self.global_step, "exported": self.exported_name(self.teacher is not None),
                 "settings": self.recorded_settings(),
                 "extra_modules": {name: unwrap_network(m).state_dict() for name, m in self.extra_modules.items()}}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.exports_teacher:
            state["student"] = unwrap_network(self.network).state_dict()
        return state

    def load_semi_state_dict(self, state: dict) -> None:
        self.global_step = state["global_step"]
        self.warn_if_settings_changed(state)
        for name, module_state in state.get("extra_modules", {}).items():
            unwrap_network(self.extra_modules[name]).load_state_dict(module_state)
        if "student" in state:  # network_weights hold the exported teacher
            unwrap_network(self.network).load_state_dict(state["student"])
        if "teacher" in state:
            self.teacher = self.new_teacher()
            self.teacher.load_state_dict(state["teacher"])

    def recorded_settings(self) -> dict:
        """Class attributes saved in ``semi_state`` so that a run resumed with ``--c`` under other values (the
        trainer's defaults changed since it started) is logged; subclasses add theirs."""
        return {"exported_network": self.exported_network}

    def settings_in_checkpoint(self, state: dict) -> dict:
        """:meth:`recorded_settings` of the run that wrote ``state``. A checkpoint written before settings were
        recorded gives what it can: which network it exported, once a teacher existed."""
        if "settings" in state:
            return state["settings"]
        return {"exported_network": state["exported"]} if "teacher" in state and "exported" in state else {}

    def variant_started_with(self, settings: dict) -> str | None:
        """The variant (without budget suffix) that continues this trainer's run started with ``settings``, named in
        the resume warning. Only the recorded settings are known, so an override names a variant only where it
        knows the unrecorded attributes match too (the trainer's own former defaults); None: no such variant."""
        return None

    def warn_if_settings_changed(self, state: dict) -> None:
        """Log the settings a resumed run was started with that this trainer no longer has."""
        then, now = self.settings_in_checkpoint(state), self.recorded_settings()
        changed = [name for name in now if name in then and then[name] != now[name]]
        if not changed:
            return
        former = ", ".join(f"{name} = {then[name]!r}" for name in changed)
        variant = self.variant_started_with({**now, **then})
        variant = variant and variant + split_budget(type(self).__name__)[1]
        self.print_to_log_file(
            f"WARNING: this run was started with {former}; {self.__class__.__name__} uses "
            f"{', '.join(f'{name} = {now[name]!r}' for name in changed)} from now on (its defaults changed since). "
            f"To continue as started, copy this fold folder into the output folder of "
            f"{variant or 'a variant with the former settings'} and resume that with --c.")

    def save_checkpoint(self, filename: str) -> None:
        """nnUNetTrainer.save_checkpoint's layout plus ``semi_state``, written to a temporary name, then renamed.
        ``network_weights`` are the exported network's."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        exported = self.teacher.module if self.exports_teacher else unwrap_network(self.network)
        checkpoint = {
            "network_weights": exported.state_dict(),
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
