"""The three commands end to end on a tiny dataset, and official-StyleGAN interop with a stand-in checkout."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_synthesis_dataset import PNG_NAME, make_png_dataset

from nnunet_semi.cli import main
from nnunet_semi.errors import UserError
from nnunet_semi.synthesis import fid, fid_report
from nnunet_semi.synthesis.data import to_real_size
from nnunet_semi.synthesis.fid_report import collect_pairs

HAS_FID_WEIGHTS = fid.wheel_torchscript_file() is not None or fid.pytorch_fid_cache_file().is_file()
TINY_GAN = ["--resolution", "16", "--batch", "4", "--channel-base", "64", "--channel-max", "8", "--z-dim", "8",
            "--snapshot-kimg", "0.004", "--device", "cpu"]


def mean_term_only(a: np.ndarray, b: np.ndarray) -> float:
    """The first FID term: a fast stand-in for the 2048 x 2048 matrix square root (tested in test_synthesis_fid)."""
    return float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))


def test_train_synthesize_and_fid_commands(nnunet_folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fid_report, "frechet_distance", mean_term_only)
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    gans = tmp_path / "gans"
    assert main(["train-gan", "11", "-o", str(gans), "--classes", "mask", "--kimg", "0.008", *TINY_GAN]) == 0
    assert sorted(p.name for p in gans.iterdir()) == ["no_foreground", "polyp"]
    assert (gans / "polyp" / "network-snapshot-000000008.pt").is_file()
    assert main(["train-gan", "11", "-o", str(gans), "--classes", "mask", "--kimg", "0.008", *TINY_GAN]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train-gan", "11", "-o", str(gans), "--classes", "mask", "--kimg", "0.012", "--resume",
                 *TINY_GAN]) == 0
    assert (gans / "polyp" / "network-snapshot-000000012.pt").is_file()

    report = tmp_path / "synth_fid.json"
    fid_options = ["--fid-report", str(report), "--fid-max-images", "2"] if HAS_FID_WEIGHTS else []
    assert main(["synthesize", "11", "--generators", str(gans), "--total", "6", "--proportions", "balance",
                 "--new-id", "12", "--new-name", "PolypsSynth", "--device", "cpu", *fid_options]) == 0
    new = nnunet_folders["nnUNet_raw"] / "Dataset012_PolypsSynth"
    manifest = json.loads((new / "synthesis_manifest.json").read_text())
    classes = [v["class"] for v in manifest["images"].values()]
    # balance: 2 real images without polyp, 4 with; 6 more make both classes 6
    assert classes.count("no_foreground") == 4 and classes.count("polyp") == 2
    assert json.loads((new / "dataset.json").read_text())["numTraining"] == 14
    # SSGNet's strategy in place, counting the synthetic images already there: level 4 x 2 = 8 per class
    assert main(["synthesize", "12", "--generators", str(gans), "--strategy", "balance+100%", "--device", "cpu"]) == 0
    classes = [v["class"] for v in json.loads((new / "synthesis_manifest.json").read_text())["images"].values()]
    assert classes.count("no_foreground") == 6 and classes.count("polyp") == 4
    capsys.readouterr()
    assert main(["synthesize", "12", "--generators", str(gans), "--strategy", "balance+100%", "--device", "cpu"]) == 0
    assert "nothing to synthesise" in capsys.readouterr().out
    assert json.loads((new / "dataset.json").read_text())["numTraining"] == 18
    if not HAS_FID_WEIGHTS:
        pytest.skip("no FID Inception weights")
    written = json.loads(report.read_text())
    assert set(written["per_class"]) == {"no_foreground", "polyp"} and written["fid"] > 0
    assert Path(written["grid"]).is_file()
    assert main(["fid", "11", "12", "-o", str(tmp_path / "fid.json"), "--max-images", "3", "--device", "cpu"]) == 0
    again = json.loads((tmp_path / "fid.json").read_text())
    assert again["per_class"]["polyp"] == {"fid": again["per_class"]["polyp"]["fid"], "num_real": 3,
                                           "num_synthetic": 3}
    assert again["num_real"] == 5 and again["num_synthetic"] == 6
    assert Image.open(tmp_path / "fid.png").size[0] > 0


def test_fid_inputs_from_folders_and_datasets(nnunet_folders, tmp_path):
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((10, 12), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    pairs = collect_pairs(PNG_NAME, str(folder), max_images=5)
    assert list(pairs) == ["all"]
    real, synthetic = pairs["all"]
    assert len(real) == 5 and real[0].shape == (3, 64, 64)  # dataset images as for GAN training
    assert len(synthetic) == 3 and synthetic[0].shape == (3, 10, 12)  # grey files are read as RGB
    with pytest.raises(UserError, match="no synthetic"):
        collect_pairs(str(folder), PNG_NAME, max_images=None)
    assert main(["fid", str(folder), str(tmp_path / "missing")]) == 2


STAND_IN_NETWORK = '''
import torch


class Generator(torch.nn.Module):
    """Stand-in with the official interface: attributes and G(z, c, truncation_psi, noise_mode)."""

    def __init__(self, z_dim, c_dim, img_resolution, img_channels):
        super().__init__()
        self.z_dim, self.c_dim = z_dim, c_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.proj = torch.nn.Linear(z_dim, img_channels * img_resolution * img_resolution)

    def forward(self, z, c, truncation_psi=1, noise_mode="random"):
        assert c.shape == (z.shape[0], self.c_dim) and noise_mode == "const"
        x = torch.tanh(self.proj(z) * truncation_psi)
        return x.view(-1, self.img_channels, self.img_resolution, self.img_resolution)
'''


STAND_IN_PACKAGES = ("dnnlib", "torch_utils", "training", "legacy")


def forget_stand_in() -> None:
    """Unimport the stand-in checkout, so that loading a pickle must find it through --stylegan-repo."""
    for name in list(sys.modules):
        if name.split(".")[0] in STAND_IN_PACKAGES:
            del sys.modules[name]


@pytest.fixture
def stand_in_repo(tmp_path, monkeypatch):
    """A folder shaped like a StyleGAN2-ADA checkout; sys.path and sys.modules are restored afterwards."""
    repo = tmp_path / "stylegan2-ada-pytorch"
    for package in STAND_IN_PACKAGES[:3]:
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text("")
    (repo / "training" / "networks.py").write_text(STAND_IN_NETWORK)
    (repo / "legacy.py").write_text("import pickle\n\n\ndef load_network_pkl(f):\n    return pickle.load(f)\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield repo
    forget_stand_in()


def make_pickle(repo: Path, path: Path, c_dim: int = 0) -> None:
    """Pickle a stand-in G_ema as the official training would have written it, then forget its code again."""
    sys.path.insert(0, str(repo))
    try:
        from training.networks import Generator

        torch.manual_seed(0)
        with open(path, "wb") as f:
            pickle.dump({"G_ema": Generator(8, c_dim, 16, 3)}, f)
    finally:
        sys.path.remove(str(repo))
        forget_stand_in()


def test_official_pickle_through_stylegan_repo(nnunet_folders, tmp_path, stand_in_repo, capsys):
    folder = make_png_dataset(nnunet_folders["nnUNet_raw"])
    pkl = tmp_path / "network-snapshot-001000.pkl"
    make_pickle(stand_in_repo, pkl)
    assert main(["synthesize", "11", "--generator", f"polyp={pkl}", "--per-class", "2"]) == 2
    assert "--stylegan-repo" in capsys.readouterr().err
    assert main(["synthesize", "11", "--generator", f"polyp={pkl}", "--stylegan-repo", str(tmp_path),
                 "--per-class", "2"]) == 2
    assert "not a StyleGAN2-ADA / StyleGAN3 checkout" in capsys.readouterr().err
    assert main(["synthesize", "11", "--generator", f"polyp={pkl}", "--stylegan-repo", str(stand_in_repo),
                 "--per-class", "2", "--seed", "7", "--truncation", "0.5", "--device", "cpu"]) == 0
    manifest = json.loads((folder / "synthesis_manifest.json").read_text())
    assert manifest["images"]["synth_polyp_000001"]["seed"] == 8
    assert manifest["runs"][0]["classes"]["polyp"]["generator_kind"] == "stylegan-official"
    # the recorded seed and truncation reproduce the written image
    with open(pkl, "rb") as f:
        generator = pickle.load(f)["G_ema"]
    z = torch.from_numpy(np.random.RandomState(8).randn(1, 8).astype(np.float32))
    expected = generator(z, torch.zeros(1, 0), truncation_psi=0.5, noise_mode="const").detach()
    expected = to_real_size(expected, [20, 16], "resize")[0].numpy()  # written at the real images' size
    expected = np.round((np.clip(expected, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)
    written = np.asarray(Image.open(folder / "imagesTr" / "synth_polyp_000001_0000.png"))
    np.testing.assert_allclose(written, expected, atol=1)

    conditional = tmp_path / "conditional.pkl"
    make_pickle(stand_in_repo, conditional, c_dim=2)
    assert main(["synthesize", "11", "--generator", f"polyp={conditional}", "--stylegan-repo",
                 str(stand_in_repo), "--per-class", "2"]) == 2
    assert "class-conditional" in capsys.readouterr().err


def test_official_pickle_with_only_g_ema_passes_the_strict_legacy_loader(nnunet_folders, tmp_path, stand_in_repo):
    """The official legacy.load_network_pkl indexes and asserts G and D; synthesis needs only G_ema."""
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    (stand_in_repo / "legacy.py").write_text(
        "import pickle\n\nimport torch\n\n\ndef load_network_pkl(f):\n    data = pickle.load(f)\n"
        "    assert isinstance(data['G'], torch.nn.Module) and isinstance(data['D'], torch.nn.Module)\n"
        "    return data\n")
    pkl = tmp_path / "g_ema_only.pkl"
    make_pickle(stand_in_repo, pkl)
    assert main(["synthesize", "11", "--generator", f"polyp={pkl}", "--stylegan-repo", str(stand_in_repo),
                 "--per-class", "1", "--device", "cpu"]) == 0


def test_official_code_that_needs_pkg_resources_names_the_fix(nnunet_folders, tmp_path, stand_in_repo, capsys):
    """StyleGAN3's ops import parse_version from pkg_resources, which setuptools >= 81 no longer ships."""
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    pkl = tmp_path / "network-snapshot-000100.pkl"
    make_pickle(stand_in_repo, pkl)
    (stand_in_repo / "legacy.py").write_text(
        "def load_network_pkl(f):\n"
        "    raise ModuleNotFoundError(\"No module named 'pkg_resources'\", name='pkg_resources')\n")
    assert main(["synthesize", "11", "--generator", f"polyp={pkl}", "--stylegan-repo", str(stand_in_repo),
                 "--per-class", "1", "--device", "cpu"]) == 2
    assert "pip install 'setuptools<81'" in capsys.readouterr().err
