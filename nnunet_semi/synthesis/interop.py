"""Use generators trained with the official StyleGAN2-ADA / StyleGAN3 code (NVlabs) in ``synthesize``.

Their network pickles (``network-snapshot-*.pkl``) can only be unpickled with that code importable: the pickles
reference (StyleGAN2-ADA) or embed (StyleGAN3, via ``torch_utils.persistence``) classes of ``dnnlib``,
``torch_utils`` and ``training``. nnunet-semi does not ship that code (its licence is non-commercial); the user
points ``--stylegan-repo`` at their own checkout, which is put on ``sys.path`` for the rest of the process. The
generator is read with the checkout's own ``legacy.load_network_pkl`` when present (it also converts TF pickles),
else with ``pickle``; ``G_ema`` is used, called as ``G(z, c, truncation_psi=..., noise_mode='const')`` with an empty
label ``c``, which is how the official ``generate.py`` calls it. Class-conditional pickles (``c_dim > 0``) are
refused: train one generator per class instead.
"""
from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path

import torch

from nnunet_semi.errors import UserError

REQUIRED_PACKAGES = ("dnnlib", "torch_utils")
REQUIRED_ATTRIBUTES = ("z_dim", "c_dim", "img_resolution", "img_channels")


def add_repo_to_path(repo: Path) -> None:
    missing = [p for p in REQUIRED_PACKAGES if not (repo / p).is_dir()]
    if missing:
        raise UserError(f"--stylegan-repo {repo}: not a StyleGAN2-ADA / StyleGAN3 checkout (no {', '.join(missing)} "
                        f"folder). Clone github.com/NVlabs/stylegan2-ada-pytorch or stylegan3 and pass its folder.")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))


def load_official_generator(pickle_path: Path, repo: Path) -> torch.nn.Module:
    """``G_ema`` of an official network pickle, in eval mode on the CPU."""
    if not pickle_path.is_file():
        raise UserError(f"Generator pickle {pickle_path} does not exist.")
    add_repo_to_path(repo.resolve())
    try:
        data = _read_network_pickle(pickle_path, repo)
    except ModuleNotFoundError as e:
        if e.name == "pkg_resources":  # the official ops import parse_version from it; setuptools >= 81 dropped it
            raise UserError(f"The StyleGAN code in {repo} imports pkg_resources, which setuptools 81 and later no "
                            f"longer provide: pip install 'setuptools<81' in this environment.") from None
        raise UserError(f"Cannot read {pickle_path} with the code in {repo} (ModuleNotFoundError: {e}). Install "
                        f"the packages that code needs.") from None
    except (pickle.UnpicklingError, AttributeError, EOFError) as e:
        raise UserError(f"Cannot read {pickle_path} with the code in {repo} ({type(e).__name__}: {e}). Is it a "
                        f"network pickle of that StyleGAN version?") from None
    generator = data.get("G_ema") if isinstance(data, dict) else None
    if not isinstance(generator, torch.nn.Module):
        raise UserError(f"{pickle_path} holds no 'G_ema' generator.")
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(generator, a)]
    if missing:
        raise UserError(f"The generator in {pickle_path} lacks {missing}; not a StyleGAN2-ADA / StyleGAN3 generator.")
    if generator.c_dim > 0:
        raise UserError(f"{pickle_path} is class-conditional (c_dim={generator.c_dim}); nnunet-semi uses one "
                        f"unconditional generator per class.")
    return generator.eval().requires_grad_(False).float()


def _read_network_pickle(pickle_path: Path, repo: Path) -> object:
    """The checkout's ``legacy.load_network_pkl`` (it also converts TF pickles); it indexes and asserts G, D and
    G_ema, so a pickle that holds only G_ema (all that synthesis needs) is read with ``pickle`` instead."""
    if (repo / "legacy.py").is_file():
        try:
            with open(pickle_path, "rb") as f:
                return importlib.import_module("legacy").load_network_pkl(f)
        except (AssertionError, KeyError):
            pass
    with open(pickle_path, "rb") as f:
        return pickle.load(f)


def official_generate(generator: torch.nn.Module, z: torch.Tensor, truncation_psi: float) -> torch.Tensor:
    """Images in about [-1, 1], [N, C, R, R], as the official ``generate.py`` produces them."""
    label = torch.zeros([z.shape[0], 0], device=z.device)
    return generator(z, label, truncation_psi=truncation_psi, noise_mode="const")
