"""Shared fixtures: every test gets its own nnU-Net folders, so tests never touch a user's data."""
from __future__ import annotations

import os

import pytest


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    """Point nnUNet_raw / _preprocessed / _results at fresh folders (nnU-Net reads them at call time)."""
    folders = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in folders.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("nnUNet_def_n_proc", os.environ.get("nnUNet_def_n_proc", "2"))
    monkeypatch.setenv("nnUNet_n_proc_DA", os.environ.get("nnUNet_n_proc_DA", "2"))
    return folders
