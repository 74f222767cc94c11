"""Images and image-level classes for ``nnunet-semi classify``: real cases of a raw dataset with classes from a CSV,
a fixed stratified test split, and the synthetic images SSGNet's class-balanced settings add to the training set."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw
from nnunet_semi.synthesis.classes import assign_classes
from nnunet_semi.synthesis.data import ImageRef, build_spec, load_images
from nnunet_semi.synthesis.synthesize import strategy_counts
from nnunet_semi.synthesis.writer import read_synthesis_manifest

SYNTHETIC_MODES = ("none", "balance", "balance+20%", "balance+50%")


def stratified_test_cases(case_classes: dict[str, str], fraction: float, seed: int) -> set[str]:
    """A fixed test split: per class, ``round(fraction * n)`` cases drawn with ``seed`` (at least one case from every
    class with two or more), so every run and every synthetic mode is scored on the same images."""
    if not 0 < fraction < 1:
        raise UserError(f"--test-fraction {fraction}: must be between 0 and 1.")
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for class_name in sorted(set(case_classes.values())):
        cases = sorted(c for c, k in case_classes.items() if k == class_name)
        count = min(max(round(fraction * len(cases)), 1 if len(cases) > 1 else 0), len(cases) - 1)
        test.update(rng.permutation(cases)[:count].tolist())
    return test


def synthetic_cases_for(mode: str, real_counts: dict[str, int], manifest: dict, dataset: str) -> dict[str, list[str]]:
    """The synthetic cases a mode adds per class: for ``balance`` / ``balance+P%`` the first ``n_c`` synthetic cases
    of class c (in case order) with n_c from SSGNet's strategy on the real training counts; ``none``: nothing."""
    if mode not in SYNTHETIC_MODES:
        raise UserError(f"--synthetic {mode}: choose one of {', '.join(SYNTHETIC_MODES)}.")
    if mode == "none":
        return {c: [] for c in real_counts}
    needed = strategy_counts(real_counts, {}, mode)
    chosen = {}
    for class_name, count in needed.items():
        available = sorted(case for case, entry in manifest["images"].items() if entry["class"] == class_name)
        if len(available) < count:
            raise UserError(f"--synthetic {mode} needs {count} synthetic images of class '{class_name}' and "
                            f"{dataset} has {len(available)}. Make them first, e.g. 'nnunet-semi synthesize "
                            f"{dataset} --generators YOUR_GANS --strategy {mode}' (the largest setting you will use "
                            f"covers the smaller ones).")
        chosen[class_name] = available[:count]
    return chosen


@dataclass
class ClassificationData:
    """uint8 images [N, C, R, R] with class indices into ``classes``, training part real + synthetic."""

    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_cases: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> real_train / synthetic / test


def load_classification_data(dataset: str, labels_csv: str, mode: str, test_fraction: float, split_seed: int,
                             size: int) -> ClassificationData:
    """Real images with their CSV classes (every image of a listed case; 3D cases give one image per slice), split
    by case, plus the mode's synthetic images (classes from the synthesis manifest) in the training part."""
    name = raw.resolve_dataset(dataset)
    refs_by_class = assign_classes(name, labels_csv)
    if len(refs_by_class) < 2:
        raise UserError(f"{labels_csv} gives {len(refs_by_class)} class; classification needs at least two.")
    case_classes = {ref.case: c for c, refs in refs_by_class.items() for ref in refs}
    test = stratified_test_cases(case_classes, test_fraction, split_seed)
    classes = list(refs_by_class)
    train_refs = {c: [r for r in refs if r.case not in test] for c, refs in refs_by_class.items()}
    test_refs = [(r, i) for i, c in enumerate(classes) for r in refs_by_class[c] if r.case in test]
    synthetic = synthetic_cases_for(mode, {c: len(r) for c, r in train_refs.items()},
                                    read_synthesis_manifest(raw.raw_root() / name), name)
    spec = build_spec(name, "all", [r for refs in refs_by_class.values() for r in refs], size, "resize")

    def images(refs: list[ImageRef], is_synthetic: bool = False) -> np.ndarray:
        return load_images(spec, refs, progress=False, synthetic=is_synthetic) if refs else \
            np.zeros((0, spec.channels, size, size), np.uint8)

    train_parts = [images(train_refs[c]) for c in classes] + \
                  [images([ImageRef(case, 0) for case in synthetic[c]], True) for c in classes]
    train_labels = [np.full(len(train_refs[c]), i) for i, c in enumerate(classes)] + \
                   [np.full(len(synthetic[c]), i) for i, c in enumerate(classes)]
    return ClassificationData(
        classes=classes, train_images=np.concatenate(train_parts), train_labels=np.concatenate(train_labels),
        test_images=images([r for r, _ in test_refs]), test_labels=np.array([i for _, i in test_refs], dtype=int),
        test_cases=sorted(test),
        counts={c: {"real_train": len(train_refs[c]), "synthetic": len(synthetic[c]),
                    "test": sum(1 for r in refs_by_class[c] if r.case in test)} for c in classes})
