"""Unlabeled cases: finding them, and drawing augmented crops from them with nnU-Net's own machinery."""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform, SegOnlyTransform
from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset
from nnunetv2.utilities.label_handling.label_handling import LabelManager


def is_unlabeled_case(properties: dict) -> bool:
    """True for a case whose label file is entirely the ignore label.

    For datasets with an ignore label, nnU-Net's preprocessing stores sampled locations of annotated voxels under
    the key ``(-1, *all_labels)`` of ``class_locations``; that list is empty exactly when no voxel is annotated.
    """
    for key, locations in properties["class_locations"].items():
        if isinstance(key, tuple) and key[0] == -1:
            return len(locations) == 0
    return False


def find_unlabeled_cases(preprocessed_folder: str, identifiers: Iterable[str]) -> set[str]:
    """The unlabeled cases among ``identifiers``, read from the preprocessed ``.pkl`` properties."""
    return {k for k in identifiers if is_unlabeled_case(load_pickle(os.path.join(preprocessed_folder, k + ".pkl")))}


def _innermost(transform: BasicTransform) -> BasicTransform:
    while isinstance(transform, RandomTransform):
        transform = transform.transform
    return transform


def split_geometric_and_photometric(pipeline: BasicTransform) -> tuple[list, list]:
    """Split an nnU-Net training pipeline into geometric and photometric transforms, dropping target transforms.

    Geometric transforms (spatial, mirroring, pseudo-2D conversion) change where voxels are; photometric ones
    (noise, blur, brightness, contrast, low resolution, gamma, masking) change their values. Segmentation-only
    transforms are dropped: unlabeled crops have no target.
    """
    transforms = pipeline.transforms if isinstance(pipeline, ComposeTransforms) else [pipeline]
    geometric, photometric = [], []
    for t in transforms:
        inner = _innermost(t)
        if isinstance(inner, SegOnlyTransform):
            continue
        if isinstance(inner, MoveSegAsOneHotToDataTransform):
            raise ValueError("cascaded configurations need previous-stage predictions of unlabeled cases, "
                             "which nnunet-semi does not produce: train a non-cascaded configuration")
        (photometric if isinstance(inner, (ImageOnlyTransform, MaskImageTransform)) else geometric).append(t)
    return geometric, photometric


class UnlabeledViews(BasicTransform):
    """nnU-Net's training augmentation for an unlabeled crop, producing ``num_views`` voxel-aligned views.

    Geometric transforms run once, photometric transforms run independently for each view, so views differ in
    appearance but not in geometry and predictions on them can be compared voxel by voxel (Mean Teacher's
    "differently augmented" inputs). The first ``weak_views`` views skip the photometric transforms (geometry
    only: UniMatch's weak view next to its strong ones). Views are stacked along the channel axis: the image becomes
    ``(num_views * C, ...)``; :func:`split_views` undoes that on a batch. Photometric transforms commute with the
    geometric ones in distribution, so moving mirroring before them (nnU-Net mirrors last) changes nothing.
    """

    def __init__(self, training_pipeline: BasicTransform, num_views: int = 1, weak_views: int = 0):
        super().__init__()
        if num_views < 1 or not 0 <= weak_views <= num_views:
            raise ValueError(f"need num_views >= 1 and 0 <= weak_views <= num_views, got {num_views}, {weak_views}")
        geometric, photometric = split_geometric_and_photometric(training_pipeline)
        self.geometric = ComposeTransforms(geometric)
        self.photometric = ComposeTransforms(photometric)
        self.num_views = num_views
        self.weak_views = weak_views

    def apply(self, data_dict: dict, **params) -> dict:
        data_dict = self.geometric(**data_dict)
        segmentation = data_dict["segmentation"]
        strong = [self.photometric(image=data_dict["image"].clone(), segmentation=segmentation)["image"]
                  for _ in range(self.num_views - self.weak_views)]
        views = [data_dict["image"]] * self.weak_views + strong
        return {"image": torch.cat(views), "segmentation": segmentation}


def split_views(data: torch.Tensor, num_views: int) -> tuple[torch.Tensor, ...]:
    """``(B, V*C, ...)`` -> V tensors of ``(B, C, ...)``."""
    return data.chunk(num_views, dim=1)


class nnUNetUnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader for unlabeled cases: uniformly random crops, no foreground oversampling.

    nnU-Net centres crops of datasets with an ignore label on annotated voxels and warns "No annotated pixels" for
    every crop of an unlabeled case; with nothing annotated there is nothing to centre on, so crops are drawn
    uniformly like nnU-Net's random (non-oversampled) crops.
    """

    def __init__(self, data: nnUNetBaseDataset, batch_size: int, patch_size, final_patch_size,
                 label_manager: LabelManager, transforms: UnlabeledViews):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        self.has_ignore = False


def labeled_cases_contain_ignore(dataset: nnUNetBaseDataset, ignore_label: int) -> bool:
    """True if any case of ``dataset`` has ignore voxels (sparse annotations), read from its preprocessed seg."""
    return any(np.any(np.asarray(dataset.load_case(k)[1][:]) == ignore_label) for k in dataset.identifiers)
