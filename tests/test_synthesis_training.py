"""GAN training loop: snapshots, resume, EMA, sampler, StyleGAN3-T, and the multi-process (torch.distributed) path
on CPU."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_semi.errors import UserError
from nnunet_semi.synthesis.augment import AugmentConfig
from nnunet_semi.synthesis.data import DataSpec
from nnunet_semi.synthesis.networks import DiscriminatorConfig, GeneratorConfig
from nnunet_semi.synthesis.stylegan3 import StyleGAN3Config, StyleGAN3Generator
from nnunet_semi.synthesis.training import (
    GanTrainer,
    RealImageSampler,
    TrainConfig,
    all_reduce_gradients,
    ema_beta,
    generator_from_checkpoint,
    is_due,
    load_checkpoint,
    resume_checkpoint,
    train_gan,
)

RES = 8


def spec() -> DataSpec:
    return DataSpec(dataset="Dataset001_X", class_name="all", resolution=RES, channels=1, rgb=False, fit="resize",
                    slice_axis=0, intensity_ranges=[[0.0, 255.0]], spacing=[999.0, 1.0, 1.0], natural_image=True)


def images(n: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, RES, RES), dtype=np.uint8)


def configs(arch: str = "stylegan2") -> tuple[GeneratorConfig, DiscriminatorConfig]:
    g_cfg = (GeneratorConfig(resolution=RES, img_channels=1, z_dim=8, w_dim=8, channel_base=64, channel_max=8)
             if arch == "stylegan2" else
             StyleGAN3Config(resolution=RES, img_channels=1, z_dim=8, w_dim=8, channel_base=64, channel_max=8,
                             num_layers=3, num_critical=1, margin_size=2))
    return g_cfg, DiscriminatorConfig(resolution=RES, img_channels=1, channel_base=64, channel_max=8)


def train_config(**overrides) -> TrainConfig:
    base = dict(kimg=0.032, batch_size=8, snapshot_kimg=0.016, ada_kimg=0.1, ada_interval=1, grid_size=2,
                r1_interval=2)
    return TrainConfig(**{**base, **overrides})


def test_ema_beta_has_the_requested_half_life():
    beta = ema_beta(batch_size=32, cur_nimg=10**9, ema_kimg=10.0, ema_rampup=0.05)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    # early in training the ramp-up shortens the half-life to 5 % of the images seen so far
    early = ema_beta(batch_size=32, cur_nimg=3200, ema_kimg=10.0, ema_rampup=0.05)
    assert early ** (160 / 32) == pytest.approx(0.5)


def test_sampler_visits_every_image_once_per_epoch():
    data = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    sampler = RealImageSampler(data, batch_size=4, seed=0, mirror=False)
    seen = torch.cat([sampler.next() for _ in range(5)]).flatten()  # 20 images = 2 epochs
    values = seen.long()
    assert sorted(values[:10].tolist()) == list(range(10))
    assert sorted(values[10:].tolist()) == list(range(10))


def test_snapshot_schedule():
    assert is_due(0, 32, 0.032) and not is_due(0, 31, 0.032) and is_due(190_000, 200_000, 200)
    assert not is_due(200_000, 200_032, 200) and is_due(199_990, 200_022, 200)  # a batch that passes the mark
    # default run of 1000 kimg at batch 32: 250 generator snapshots (5 kept), 5 full ones, one latest state
    steps = [(n, n + 32) for n in range(0, 1_000_000, 32)]
    assert sum(is_due(a, b, 4.0) for a, b in steps) == 250 and sum(is_due(a, b, 200.0) for a, b in steps) == 5


@pytest.mark.parametrize("arch", ["stylegan2", "stylegan3-t"])
def test_training_writes_snapshots_and_resumes(tmp_path, arch):
    g_cfg, d_cfg = configs(arch)
    out = tmp_path / "gan"
    extra = dict(blur_init_sigma=2.0, style_mixing_prob=0.0, pl_weight=0.0) if arch == "stylegan3-t" else {}
    final = train_gan(images(), spec(), out, train_config(full_snapshot_kimg=0.032, **extra), g_cfg, d_cfg)
    assert final.name == "network-snapshot-000000032.pt"
    assert sorted(p.name for p in out.glob("*.pt")) == ["full-snapshot-000000032.pt", "latest-state.pt",
                                                       "network-snapshot-000000016.pt", final.name]
    assert (out / "samples-000000032.png").is_file() and (out / "reals.png").is_file()
    assert not list(out.glob(".*"))  # no temporary files left behind
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in log] == [0.016, 0.032] and all(np.isfinite(r["loss_G"]) for r in log)
    snapshot = load_checkpoint(final)
    assert snapshot["arch"] == arch and "G" not in snapshot and "opt_D" not in snapshot  # generator only
    state = load_checkpoint(resume_checkpoint(out))
    assert resume_checkpoint(out).name == "latest-state.pt"
    assert state["cur_nimg"] == 32 and state["step_index"] == 4
    assert state["augment_p"] == pytest.approx(log[-1]["augment_p"])
    if arch == "stylegan2":  # ada_kimg 0.1 and a tiny D that overfits at once: p must have moved
        assert state["augment_p"] > 0
    g_ema = generator_from_checkpoint(snapshot)
    assert isinstance(g_ema, StyleGAN3Generator) == (arch == "stylegan3-t")
    changed = [k for k, v in g_ema.state_dict().items() if not torch.equal(v, state["G"][k])]
    assert changed  # the EMA generator is not the trained one
    with pytest.raises(UserError, match="generator only"):
        train_gan(images(), spec(), out, train_config(kimg=0.048), g_cfg, d_cfg, resume=final)
    resumed = train_gan(images(), spec(), out, train_config(kimg=0.048, keep_snapshots=2), g_cfg, d_cfg,
                        resume=resume_checkpoint(out))
    assert load_checkpoint(resumed)["cur_nimg"] == 48 and load_checkpoint(out / "latest-state.pt")["step_index"] == 6
    assert sorted(p.name for p in out.glob("network-snapshot-*.pt")) == [final.name, "network-snapshot-000000048.pt"]


def test_load_checkpoint_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable"):
        load_checkpoint(bad)
    torch.save({"some": "dict"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an nnunet-semi GAN checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank: int, port: int, out_dir: str, arch: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        module = torch.nn.Linear(2, 1)
        module.weight.grad = torch.full_like(module.weight, float(rank + 1))  # rank 0: 1, rank 1: 2
        module.bias.grad = None  # a parameter without gradient on this rank counts as zero
        all_reduce_gradients(module, 2)
        g_cfg, d_cfg = configs(arch)
        trainer = GanTrainer(images(), spec(), __import__("pathlib").Path(out_dir), train_config(kimg=0.024), g_cfg,
                             d_cfg, AugmentConfig(), torch.device("cpu"), rank=rank, world_size=2)
        trainer.broadcast_parameters()
        trainer.run()
        torch.save({"weight_grad": module.weight.grad, "bias_grad": module.bias.grad,
                    "G": trainer.G.state_dict(), "D": trainer.D.state_dict(), "p": float(trainer.augment.p)},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("arch", ["stylegan2", "stylegan3-t"])
def test_two_processes_average_gradients_and_stay_identical(tmp_path, arch):
    """torch.distributed with gloo on CPU: different real images per rank, yet identical networks, buffers included
    (the mean w; StyleGAN3's input-magnitude averages)."""
    mp.spawn(_two_rank_worker, args=(_free_port(), str(tmp_path), arch), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for r in (r0, r1):
        torch.testing.assert_close(r["weight_grad"], torch.full((1, 2), 1.5))
        torch.testing.assert_close(r["bias_grad"], torch.zeros(1))
    for name in ("G", "D"):
        for key in r0[name]:
            torch.testing.assert_close(r0[name][key], r1[name][key], msg=f"{name}.{key} differs between ranks")
    assert r0["p"] == r1["p"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["latest-state.pt", "network-snapshot-000000016.pt",
                                                           "network-snapshot-000000024.pt", "rank0.pt", "rank1.pt"]


def test_train_gan_spawns_workers(tmp_path):
    g_cfg, d_cfg = configs()
    final = train_gan(images(), spec(), tmp_path, train_config(kimg=0.016), g_cfg, d_cfg, world_size=2,
                      backend="gloo")
    assert load_checkpoint(final)["cur_nimg"] == 16
