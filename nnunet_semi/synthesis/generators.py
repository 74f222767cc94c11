"""Class generators for ``synthesize``: our checkpoints or official StyleGAN pickles behind one interface.

Image ``i`` of a run is drawn from ``z = np.random.RandomState(seed_i).randn(z_dim)``, as the official
``generate.py`` does. Our generators also draw their per-pixel noise inputs from ``seed_i``
(:meth:`Generator.seeded_noise`): a constant noise pattern would put the same fine detail (e.g. specular highlights)
at the same pixels of every synthetic image. Official pickles use their constant noise (``noise_mode='const'``, the
official default). Either way a (generator, seed, truncation) triple from the manifest reproduces the image.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnunet_semi.errors import UserError
from nnunet_semi.synthesis.classes import assign_classes
from nnunet_semi.synthesis.data import DataSpec, build_spec
from nnunet_semi.synthesis.interop import load_official_generator, official_generate
from nnunet_semi.synthesis.training import generator_from_checkpoint, latest_checkpoint, load_checkpoint

KIND_OURS = "nnunet-semi"
KIND_OFFICIAL = "stylegan-official"


@dataclass
class ClassGenerator:
    """One class's generator, where it came from, and the :class:`DataSpec` that maps its images to the dataset."""

    class_name: str
    source: Path
    kind: str
    network: torch.nn.Module
    z_dim: int
    spec: DataSpec
    truncation_psi: float = 1.0

    def latents(self, seeds: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.random.RandomState(s).randn(self.z_dim) for s in seeds]).astype(
            np.float32))

    def generate(self, seeds: list[int], device: str = "cpu", batch_size: int = 16
                 ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield (seeds, images [n, C, R, R] as float32 in about [-1, 1]) batch by batch."""
        network = self.network.to(device)
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start:start + batch_size]
            z = self.latents(chunk).to(device)
            with torch.no_grad():
                if self.kind == KIND_OURS:
                    noise = network.seeded_noise(chunk, device)
                    images = network(z, truncation_psi=self.truncation_psi, noise=noise)
                else:
                    images = official_generate(network, z, self.truncation_psi)
            yield chunk, images.float().cpu().numpy()


def from_checkpoint(path: Path, class_name: str | None = None) -> ClassGenerator:
    ckpt = load_checkpoint(path)
    spec = DataSpec.from_dict(ckpt["data_spec"])
    if class_name is not None:
        spec.class_name = class_name
    network = generator_from_checkpoint(ckpt)
    return ClassGenerator(spec.class_name, path, KIND_OURS, network, network.z_dim, spec)


def from_official_pickle(path: Path, repo: Path, class_name: str, dataset: str) -> ClassGenerator:
    """An official pickle; its real images (for proportions and FID) are all real images of ``dataset``."""
    network = load_official_generator(path, repo)
    refs = assign_classes(dataset, "all")["all"]
    spec = build_spec(dataset, class_name, refs, int(network.img_resolution), "resize")
    if spec.channels != int(network.img_channels):
        raise UserError(f"{path} generates {network.img_channels}-channel images but {dataset} has "
                        f"{spec.channels} channel(s).")
    return ClassGenerator(class_name, path, KIND_OFFICIAL, network, int(network.z_dim), spec)


def from_folder(folder: Path) -> list[ClassGenerator]:
    """The latest checkpoint of every class in a ``train-gan`` output folder (or of the folder itself)."""
    if not folder.is_dir():
        raise UserError(f"--generators {folder}: folder does not exist.")
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    found = [from_checkpoint(ckpt) for ckpt in (latest_checkpoint(p) for p in candidates) if ckpt is not None]
    if not found:
        raise UserError(f"--generators {folder}: no network-snapshot-*.pt found in it or its subfolders "
                        f"(train with 'nnunet-semi train-gan' first).")
    return found


def parse_generator_option(value: str) -> tuple[str | None, Path]:
    """``CLASS=PATH`` or ``PATH`` (the class is then read from the checkpoint)."""
    if "=" in value:
        class_name, path = value.split("=", 1)
        if not class_name:
            raise UserError(f"--generator {value}: empty class name before '='.")
        return class_name, Path(path)
    return None, Path(value)


def load_generators(folder: Path | None, explicit: list[str], dataset: str, stylegan_repo: Path | None,
                    truncation_psi: float) -> list[ClassGenerator]:
    """Generators from ``--generators DIR`` and/or ``--generator [CLASS=]PATH``; class names must be unique."""
    generators = from_folder(folder) if folder is not None else []
    for value in explicit:
        class_name, path = parse_generator_option(value)
        if path.suffix == ".pkl":
            if stylegan_repo is None:
                raise UserError(f"--generator {value}: a .pkl from the official StyleGAN code needs "
                                f"--stylegan-repo pointing at that code's checkout.")
            if class_name is None:
                raise UserError(f"--generator {value}: give the class of an official pickle as CLASS=PATH.")
            generators.append(from_official_pickle(path, stylegan_repo, class_name, dataset))
        else:
            if not path.is_file():
                raise UserError(f"--generator {value}: {path} does not exist.")
            generators.append(from_checkpoint(path, class_name))
    if not generators:
        raise UserError("Give --generators DIR (output of train-gan) or at least one --generator [CLASS=]PATH.")
    names = [g.class_name for g in generators]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"Several generators for class(es) {duplicates}; pass one per class.")
    for g in generators:
        g.truncation_psi = truncation_psi
    return generators
