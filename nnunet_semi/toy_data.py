"""Tiny synthetic segmentation data for the demo and the tests: learnable in a few hundred CPU iterations.

Each image shows one ellipse on a smooth, noisy background: label 1 is its bright core, label 2 its darker rim.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy.ndimage import gaussian_filter

from nnunet_semi.planners.raw import RawDatasetWriter, commit_all


def _ellipse_labels(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """0 background, 1 core, 2 rim of a randomly placed, sized and oriented ellipse(-oid)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    centre = np.array([rng.uniform(0.3, 0.7) * s for s in shape])
    radii = np.array([rng.uniform(0.15, 0.3) * s for s in shape])
    rotation, _ = np.linalg.qr(rng.normal(size=(len(shape), len(shape))))
    distance = np.sqrt(((((grid - centre) @ rotation) / radii) ** 2).sum(-1))
    return np.where(distance < 0.6, 1, np.where(distance < 1.0, 2, 0)).astype(np.uint8)


def _toy_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    background = gaussian_filter(rng.normal(size=labels.shape), sigma=max(labels.shape) / 8)
    background = 60 + 40 * background / (np.abs(background).max() + 1e-8)
    image = np.choose(labels, [background, np.full(labels.shape, 200.0), np.full(labels.shape, 130.0)])
    image = gaussian_filter(image, 0.7) + rng.normal(0, 15, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_toy_2d_folders(out_dir: str | Path, num_cases: int = 60, size: int = 64,
                         seed: int = 0) -> tuple[Path, Path]:
    """``images/`` (grey PNG) and ``masks/`` (PNG of label values) as a user's 2D data would come."""
    rng = np.random.default_rng(seed)
    images, masks = Path(out_dir) / "images", Path(out_dir) / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(num_cases):
        labels = _ellipse_labels((size, size), rng)
        Image.fromarray(_toy_image(labels, rng)).save(images / f"toy{i:03d}.png")
        Image.fromarray(labels).save(masks / f"toy{i:03d}.png")
    return images, masks


def write_toy_3d_dataset(dataset_id: int, name: str = "Toy3D", num_subjects: int = 12, frames: int = 2,
                         shape: tuple[int, int, int] = (16, 32, 32), spacing=(2.0, 1.0, 1.0), seed: int = 0) -> str:
    """A raw nnU-Net NIfTI dataset, cases ``subjNNN_frameFF`` (several frames per subject, like ACDC)."""
    rng = np.random.default_rng(seed)
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "core": 1, "rim": 2},
                    "file_ending": ".nii.gz"}
    with RawDatasetWriter(dataset_id, name, dataset_json) as writer:
        for subject in range(num_subjects):
            for frame in range(1, frames + 1):
                labels = _ellipse_labels(shape, rng)
                image_paths, label_path = writer.new_training_case(f"subj{subject:03d}_frame{frame:02d}")
                for array, path in ((_toy_image(labels, rng).astype(np.float32), image_paths[0]),
                                    (labels, label_path)):
                    itk = sitk.GetImageFromArray(array)
                    itk.SetSpacing(tuple(reversed(spacing)))
                    sitk.WriteImage(itk, str(path))
        commit_all([writer])
    return writer.name
