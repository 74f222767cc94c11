"""SSGNet's pseudo-label rounds: the schedule, the restarted learning rate, pseudo-labels and their confidence filter
against hand values, atomic storage, and the dataset that trains on them through nnU-Net's loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_semi.components.pseudo_label_rounds import (
    PseudoLabeledDataset,
    PseudoLabelStore,
    RoundwisePolyLRScheduler,
    foreground_locations,
    pseudo_label,
    round_of_epoch,
    round_start_epochs,
)
from nnunet_semi.components.pseudo_labels import confidence
from nnunet_semi.files import temporary_files


def test_round_schedule_splits_epochs_evenly():
    assert round_start_epochs(10, 2) == [0, 3, 7]
    assert round_start_epochs(6, 2) == [0, 2, 4]
    assert round_start_epochs(5, 0) == [0]
    assert [round_of_epoch(e, [0, 3, 7]) for e in range(10)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="at least 3 epochs"):
        round_start_epochs(2, 2)


def test_learning_rate_restarts_at_every_round():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = RoundwisePolyLRScheduler(optimizer, 0.01, [0, 3, 7], 10)
    rates = []
    for epoch in range(10):
        scheduler.step(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    round_0 = [0.01 * (1 - e / 3) ** 0.9 for e in range(3)]
    round_1 = [0.01 * (1 - e / 4) ** 0.9 for e in range(4)]
    assert rates == pytest.approx(round_0 + round_1 + round_0)


def _label_manager(ignore: bool = False, regions: bool = False) -> LabelManager:
    if regions:
        return LabelManager({"background": 0, "whole": (1, 2), "core": 2}, regions_class_order=(1, 2))
    labels = {"background": 0, "a": 1, "b": 2, **({"ignore": 3} if ignore else {})}
    return LabelManager(labels, regions_class_order=None)


def test_pseudo_label_is_argmax_with_mean_confidence_and_optional_voxel_filter():
    # 3 classes, 2 voxels: probabilities (0.7, 0.2, 0.1) and (0.4, 0.35, 0.25)
    probabilities = torch.tensor([[0.7, 0.4], [0.2, 0.35], [0.1, 0.25]])
    logits = probabilities.log()
    segmentation, mean_confidence = pseudo_label(logits, _label_manager(), None)
    assert segmentation.tolist() == [[0, 0]] and segmentation.dtype == np.uint8
    assert mean_confidence == pytest.approx((0.7 + 0.4) / 2)
    filtered, _ = pseudo_label(logits, _label_manager(ignore=True), 0.5)
    assert filtered.tolist() == [[0, 3]]  # the unsure voxel gets the ignore label


def test_region_confidence_is_the_least_certain_region():
    probabilities = torch.tensor([[0.9, 0.3], [0.2, 0.6]])  # 2 regions, 2 voxels
    assert confidence(probabilities, has_regions=True).tolist() == pytest.approx([0.8, 0.6])


def test_foreground_locations_have_nnunet_keys():
    segmentation = np.zeros((1, 6, 6), dtype=np.uint8)
    segmentation[0, 1, 2] = 2
    dense = foreground_locations(segmentation, _label_manager())
    assert set(dense) == {1, 2} and len(dense[1]) == 0 and dense[2].tolist() == [[0, 1, 2]]
    sparse = foreground_locations(segmentation, _label_manager(ignore=True))
    assert (-1, 0, 1, 2) in sparse and len(sparse[(-1, 0, 1, 2)]) > 0


def test_store_writes_atomically_and_lists_missing_and_confident_cases(tmp_path):
    store = PseudoLabelStore(tmp_path / "round_1")
    segmentation = np.ones((1, 4, 4), dtype=np.uint8)
    store.write("a", segmentation, {1: np.zeros((1, 3))}, 0.95)
    store.write("b", segmentation, {1: np.zeros((1, 3))}, 0.5)
    with pytest.raises(Exception):
        store.write("c", segmentation, {1: lambda: None}, 0.9)  # cannot be pickled: nothing is left behind
    assert store.missing(["a", "b", "c"]) == ["c"] and not temporary_files(store.folder)
    assert not store.path("c").exists()
    assert store.confident_keys(["a", "b"], 0.9) == ["a"]
    assert np.array_equal(store.load("a")["segmentation"], segmentation)


def test_dataset_serves_pseudo_labels_for_unlabeled_cases(tmp_path):
    folder = tmp_path / "preprocessed"
    folder.mkdir()
    for key, label in (("lab", 1), ("unl", 3)):
        seg = np.full((1, 5, 5), label, dtype=np.uint8)
        nnUNetDatasetNumpy.save_case(np.full((1, 5, 5), 0.5, np.float32), seg,
                                     {"class_locations": {}, "spacing": [1, 1]}, str(folder / key))
    store = PseudoLabelStore(tmp_path / "round_1")
    pseudo = np.full((1, 5, 5), 2, dtype=np.uint8)
    store.write("unl", pseudo, {2: np.array([[0, 1, 1]])}, 0.9)
    dataset = PseudoLabeledDataset(nnUNetDatasetNumpy(str(folder), ["lab"]), nnUNetDatasetNumpy(str(folder), ["unl"]),
                                   store)
    assert dataset.identifiers == ["lab", "unl"]
    data, seg, _, properties = dataset.load_case("unl")
    assert np.array_equal(seg, pseudo) and properties["class_locations"][2].tolist() == [[0, 1, 1]]
    assert properties["spacing"] == [1, 1] and np.allclose(data, 0.5)
    assert np.all(np.asarray(dataset.load_case("lab")[1]) == 1)

