"""Shared fixtures: every test gets its own nnU-Net folders, so tests never touch a user's data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# nnU-Net's pools (validation export and metrics after every training, postprocessing) spawn nnUNet_def_n_proc
# workers, each importing torch and nnU-Net for seconds before its first case; the tests' toy cases are fewer than
# that costs, so one worker per pool, in this process (read when nnunetv2 is imported) and in every nnU-Net command
# the tests run. Data-augmentation workers are forked (cheap) and keep the documented default.
os.environ["nnUNet_def_n_proc"] = "1"


@pytest.fixture(autouse=True)
def private_feature_cache(tmp_path_factory, monkeypatch):
    """FID feature caches go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("nnUNet_semi_cache", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    """Point nnUNet_raw / _preprocessed / _results at fresh folders (nnU-Net reads them at call time)."""
    folders = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in folders.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("nnUNet_n_proc_DA", os.environ.get("nnUNet_n_proc_DA", "2"))
    return folders


@pytest.fixture(scope="session")
def tiny_kl_folder(tmp_path_factory) -> Path:
    """A randomly initialised two-level diffusers AutoencoderKL (factor 2, 4 latent channels) saved as a model
    folder: the stand-in for the Stable-Diffusion VAE in tests."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, sample_size=16)
    folder = tmp_path_factory.mktemp("vae") / "tiny_kl"
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_2d(tmp_path_factory, worker_id):
    """The planned 2d toy workspace (Dataset502_ToySemi6 and its twins), built once per test run."""
    from e2e_support import build_toy_2d, built_once, toy_2d_workspace

    return built_once(tmp_path_factory, worker_id, "e2e_2d", build_toy_2d, toy_2d_workspace)


@pytest.fixture(scope="session")
def toy_3d(tmp_path_factory):
    """The planned 3d_fullres toy workspace (Dataset512_Toy3DSemi3), built once per test process."""
    from e2e_support import build_toy_3d

    return build_toy_3d(tmp_path_factory.mktemp("e2e_3d"))
