"""SSGNet's iterative pseudo-label rounds (Ma et al., BMVC 2025, section 3.4): the round schedule, pseudo-labels of
unlabeled cases stored in the trainer's output folder, and a dataset that trains on them like on labeled cases."""
from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import distributed as dist
from tqdm import tqdm

from nnunet_semi.components.pseudo_labels import confidence
from nnunet_semi.core.trainer import ScaledPolyLRScheduler
from nnunet_semi.files import write_atomic

PSEUDO_LABEL_FILTERS = (None, "voxel", "case")


def round_start_epochs(num_epochs: int, rounds: int) -> list[int]:
    """First epoch of each of the ``rounds + 1`` rounds (round 0: labeled cases only), splitting ``num_epochs`` as
    evenly as possible: e.g. 10 epochs, 2 rounds -> [0, 3, 7]."""
    if rounds < 0 or num_epochs < rounds + 1:
        raise ValueError(f"{rounds} pseudo-label rounds need at least {rounds + 1} epochs, got {num_epochs}")
    return [round(r * num_epochs / (rounds + 1)) for r in range(rounds + 1)]


def round_of_epoch(epoch: int, starts: list[int]) -> int:
    """The round that ``epoch`` belongs to, given the rounds' first epochs."""
    return max(r for r, start in enumerate(starts) if start <= epoch)


class RoundwisePolyLRScheduler(ScaledPolyLRScheduler):
    """nnU-Net's poly schedule restarted at every round: round r runs the full schedule from ``initial_lr`` down to
    0 over its own epochs, as if each round were one nnU-Net training started from the previous round's weights."""

    def __init__(self, optimizer, initial_lr: float, starts: list[int], num_epochs: int):
        self.starts, self.num_epochs = starts, num_epochs
        super().__init__(optimizer, initial_lr, num_epochs)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:  # torch's constructor call
            super().step(current_step)
            return
        r = round_of_epoch(current_step, self.starts)
        end = self.starts[r + 1] if r + 1 < len(self.starts) else self.num_epochs
        self.max_steps = end - self.starts[r]
        super().step(current_step - self.starts[r])


def foreground_locations(segmentation: np.ndarray, label_manager: LabelManager) -> dict:
    """nnU-Net's ``class_locations`` for a (1, *spatial) label map, sampled exactly as its preprocessor does for the
    given label manager (foreground classes or regions, plus all annotated voxels if it has an ignore label)."""
    keys = list(label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels)
    if label_manager.has_ignore_label:
        keys.append([-1] + label_manager.all_labels)
    return DefaultPreprocessor._sample_foreground_locations(segmentation, keys)


class PseudoLabelStore:
    """The pseudo-labels of one round: ``<folder>/<case>.pkl`` holding ``segmentation`` (1, *spatial) at the
    preprocessed resolution, its ``class_locations`` and the case's mean ``confidence``. Each file is written
    atomically, so a file that exists is complete and a killed prediction resumes with the missing cases."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pkl"

    def missing(self, keys: list[str]) -> list[str]:
        return [k for k in keys if not self.path(k).is_file()]

    def write(self, key: str, segmentation: np.ndarray, class_locations: dict, mean_confidence: float) -> None:
        record = {"segmentation": segmentation, "class_locations": class_locations, "confidence": mean_confidence}

        def dump(tmp: str) -> None:
            with open(tmp, "wb") as f:
                pickle.dump(record, f)

        write_atomic(self.path(key), dump)

    def load(self, key: str) -> dict:
        with open(self.path(key), "rb") as f:
            return pickle.load(f)

    def confident_keys(self, keys: list[str], threshold: float) -> list[str]:
        """The cases whose mean confidence reaches ``threshold`` (SSGNet's optional case-level filter)."""
        return [k for k in keys if self.load(k)["confidence"] >= threshold]


def pseudo_label(logits: torch.Tensor, label_manager: LabelManager, voxel_threshold: float | None
                 ) -> tuple[np.ndarray, float]:
    """(C, *spatial) logits of one case -> ((1, *spatial) label map, mean confidence). With ``voxel_threshold``
    voxels whose confidence is below it get the ignore label (nnU-Net then leaves them out of the loss)."""
    probabilities = label_manager.apply_inference_nonlin(logits.float())
    segmentation = label_manager.convert_probabilities_to_segmentation(probabilities).cpu().numpy()
    certainty = confidence(probabilities, label_manager.has_regions).cpu().numpy()
    if voxel_threshold is not None:
        segmentation[certainty < voxel_threshold] = label_manager.ignore_label
    dtype = np.uint8 if int(segmentation.max()) <= 127 else np.int16  # nnU-Net's seg dtypes
    return segmentation.astype(dtype)[None], float(certainty.mean())


def write_missing_pseudo_labels(store: PseudoLabelStore, keys: list[str],
                                make: Callable[[str], tuple[np.ndarray, dict, float]]) -> list[str]:
    """Write the pseudo-label ``make(key)`` (segmentation, class locations, mean confidence) of every key without
    one. Under DDP each rank makes every world_size-th of them and all ranks return once every key has one (rank 0
    lists the missing keys and broadcasts the list, so all ranks split the same list even when one rank starts
    writing before another has looked). Returns the keys this rank made."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    missing = [store.missing(keys) if rank == 0 else None]
    if distributed:
        dist.broadcast_object_list(missing, src=0)
    mine = missing[0][rank::world_size]
    for key in tqdm(mine, desc="pseudo-labels", unit="case", disable=rank != 0):
        store.write(key, *make(key))
    if distributed:
        dist.barrier()
    return mine


class PseudoLabeledDataset(nnUNetBaseDataset):
    """nnU-Net's training dataset plus pseudo-labeled unlabeled cases: a pseudo-labeled case's image comes from the
    preprocessed dataset, its segmentation and foreground locations from the store, so nnU-Net's loader samples
    and augments it exactly like a labeled case."""

    def __init__(self, labeled: nnUNetBaseDataset, unlabeled: nnUNetBaseDataset, store: PseudoLabelStore):
        super().__init__(labeled.source_folder, labeled.identifiers + unlabeled.identifiers)
        self.labeled, self.unlabeled, self.store = labeled, unlabeled, store
        self.pseudo_labeled = set(unlabeled.identifiers)

    def load_case(self, identifier):
        if identifier not in self.pseudo_labeled:
            return self.labeled.load_case(identifier)
        data, _, seg_prev, properties = self.unlabeled.load_case(identifier)
        record = self.store.load(identifier)
        return data, record["segmentation"], seg_prev, {**properties, "class_locations": record["class_locations"]}

    @staticmethod
    def save_case(data, seg, properties, output_filename_truncated):
        raise NotImplementedError("pseudo-labels are written by PseudoLabelStore")

    @staticmethod
    def get_identifiers(folder: str) -> list[str]:
        raise NotImplementedError("a PseudoLabeledDataset is built from two datasets")
