"""StyleGAN2-ADA / StyleGAN3-T training loop: one generator for one class of real images.

Per iteration (StyleGAN2 / StyleGAN2-ADA training schedule):

1. generator step: non-saturating loss on augmented fakes, with style mixing regularisation (StyleGAN Sec. 3.1);
   every ``pl_interval`` steps the path-length penalty (StyleGAN2 Sec. 3.2, weight ``pl_weight`` = 2 on half the
   batch, as the official configuration) is added, multiplied by the interval (lazy regularisation, as for R1);
2. discriminator step: logistic loss on augmented reals and fakes; every ``r1_interval`` steps the R1 penalty on
   the reals is added, multiplied by the interval ("lazy regularisation", StyleGAN2 Appendix B; we add it to the
   ordinary step instead of running a separate one, so the optimiser settings need no correction);
3. ADA: every ``ada_interval`` steps p moves according to E[sign(D(real))] (ADA Sec. 3);
4. generator EMA with a half-life of ``ema_kimg`` thousand images, ramped up over the first images (StyleGAN2-ADA).

StyleGAN3-T (``--arch stylegan3-t``) trains with the same loop, the same discriminator, ADA, R1 and EMA, and the
settings of its paper's configuration (Appendix F): no path-length regulariser and no style mixing, the
discriminator's images blurred with a Gaussian of ``blur_init_sigma`` = 10 pixels fading to 0 over the first
``blur_fade_kimg`` = 200 kimg, D's learning rate 0.002; the synthesis layers' input-magnitude averages are updated
in the generator step and averaged over ranks like the mean w.

Nothing in a training step waits for the device: losses, R1, ADA's statistics and p stay on the device; the
host reads them every ``PROGRESS_INTERVAL`` steps for the progress bar and at snapshots.

Several GPUs: one process per GPU (``torch.multiprocessing.spawn``), each drawing its own real images (per-rank
sampling) for ``batch_size / world_size`` of the batch; gradients and ADA statistics are all-reduced after each
backward pass (as StyleGAN2-ADA does, instead of DDP, which does not support the double backward of R1); only rank
0 writes checkpoints and samples. On CUDA, forward passes run under bfloat16 autocast (mixed precision; R1 is
computed in float32).

Files (N = number of real images shown to D), each written to a temporary name and renamed, so an interrupted run
leaves only complete files:

* every ``snapshot_kimg`` (4): ``network-snapshot-NNNNNNNNN.pt``, the EMA generator only (what ``synthesize``
  uses; the last ``keep_snapshots`` are kept), a sample grid, a log line, and ``latest-state.pt``, the full state
  (G, D, G_ema, both optimisers, ADA p, path-length mean), overwritten, which is what ``resume`` continues from;
* every ``full_snapshot_kimg`` (200, the official interval): ``full-snapshot-NNNNNNNNN.pt``, the full state, all
  kept. At default widths the full state is about 600 MB and G_ema about 100 MB.
"""
from __future__ import annotations

import copy
import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.synthesis.augment import AdaptiveAugment, AugmentConfig, ada_p_update
from nnunet_semi.synthesis.data import DataSpec
from nnunet_semi.files import write_atomic
from nnunet_semi.synthesis.grid import save_image_grid
from nnunet_semi.synthesis.losses import (
    default_r1_gamma,
    discriminator_loss,
    generator_loss,
    path_length_penalty,
    r1_penalty,
)
from nnunet_semi.synthesis.networks import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    StyleGenerator,
)
from nnunet_semi.synthesis.stylegan3 import StyleGAN3Config, StyleGAN3Generator
from nnunet_semi.synthesis.filters import gaussian_blur

CHECKPOINT_FORMAT = "nnunet-semi-stylegan2-ada/1"
SNAPSHOT_GLOB = "network-snapshot-*.pt"
FULL_SNAPSHOT_GLOB = "full-snapshot-*.pt"
LATEST_STATE = "latest-state.pt"
GRID_SEED = 123456
PROGRESS_INTERVAL = 20  # steps between reads of the losses for the progress bar (host-device syncs)

ARCHITECTURES: dict[str, tuple[type[GeneratorConfig], type[StyleGenerator]]] = {
    "stylegan2": (GeneratorConfig, Generator),
    "stylegan3-t": (StyleGAN3Config, StyleGAN3Generator),
}


def arch_of(g_cfg: GeneratorConfig) -> str:
    return next(name for name, (config_class, _) in ARCHITECTURES.items() if type(g_cfg) is config_class)


def generator_config(arch: str, fields: dict) -> GeneratorConfig:
    if arch not in ARCHITECTURES:
        raise UserError(f"Unknown generator architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[arch][0](**fields)


def build_generator(g_cfg: GeneratorConfig) -> StyleGenerator:
    return ARCHITECTURES[arch_of(g_cfg)][1](g_cfg)


@dataclass
class TrainConfig:
    """Training hyperparameters; defaults follow StyleGAN2-ADA's configuration for small data sets."""

    kimg: float = 1000.0
    batch_size: int = 32
    learning_rate: float = 0.0025
    d_learning_rate: float | None = None  # None: learning_rate
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    r1_gamma: float | None = None  # None: default_r1_gamma(resolution, batch_size)
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float = 0.05
    augment: bool = True
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0
    mirror: bool = False
    blur_init_sigma: float = 0.0  # StyleGAN3: 10
    blur_fade_kimg: float = 200.0
    snapshot_kimg: float = 4.0
    full_snapshot_kimg: float = 200.0
    keep_snapshots: int = 5
    grid_size: int = 8
    seed: int = 0
    mixed_precision: bool = True

    def gamma(self, resolution: int) -> float:
        return self.r1_gamma if self.r1_gamma is not None else default_r1_gamma(resolution, self.batch_size)

    def blur_sigma(self, cur_nimg: int) -> float:
        """StyleGAN3's discriminator blur: blur_init_sigma fading linearly to 0 over blur_fade_kimg."""
        if self.blur_init_sigma <= 0:
            return 0.0
        return self.blur_init_sigma * max(1.0 - cur_nimg / (self.blur_fade_kimg * 1000.0), 0.0)


def snapshot_path(out_dir: Path, cur_nimg: int) -> Path:
    return out_dir / f"network-snapshot-{cur_nimg:09d}.pt"


def snapshot_kimg(snapshot: Path) -> float:
    """Thousands of images shown when a (network or full) snapshot was written, read from its file name."""
    return int(snapshot.stem.rsplit("-", 1)[1]) / 1000


def full_snapshot_path(out_dir: Path, cur_nimg: int) -> Path:
    return out_dir / f"full-snapshot-{cur_nimg:09d}.pt"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest generator snapshot of a run folder (what ``synthesize`` uses)."""
    snapshots = sorted(out_dir.glob(SNAPSHOT_GLOB))
    return snapshots[-1] if snapshots else None


def resume_checkpoint(out_dir: Path) -> Path | None:
    """What ``--resume`` continues from: ``latest-state.pt``, else the newest full snapshot, else (runs of
    nnunet-semi before full snapshots existed) the newest network snapshot."""
    if (out_dir / LATEST_STATE).is_file():
        return out_dir / LATEST_STATE
    full = sorted(out_dir.glob(FULL_SNAPSHOT_GLOB))
    return full[-1] if full else latest_checkpoint(out_dir)


def is_due(previous_nimg: int, cur_nimg: int, interval_kimg: float) -> bool:
    """Whether a multiple of ``interval_kimg`` thousand images lies in (previous_nimg, cur_nimg]."""
    interval = max(int(interval_kimg * 1000), 1)
    return cur_nimg // interval > previous_nimg // interval


def load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, not a torch file, or a foreign pickle
        raise UserError(f"{path} is not a readable nnunet-semi GAN checkpoint ({type(e).__name__}: {e}). For "
                        f"pickles of the official StyleGAN2-ADA / StyleGAN3 code pass --stylegan-repo.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an nnunet-semi GAN checkpoint (format {CHECKPOINT_FORMAT}).")
    return ckpt


def generator_from_checkpoint(ckpt: dict) -> StyleGenerator:
    """The EMA generator of a checkpoint (full state or generator snapshot), in eval mode on the CPU."""
    generator = build_generator(generator_config(ckpt.get("arch", "stylegan2"), ckpt["generator_config"]))
    generator.load_state_dict(ckpt["G_ema"])
    return generator.eval().requires_grad_(False)


def all_reduce_gradients(module: torch.nn.Module, world_size: int) -> None:
    """Average gradients over ranks (one flat all-reduce) and replace NaN/Inf, as StyleGAN2-ADA does."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    if world_size > 1:
        dist.all_reduce(flat)
        flat /= world_size
    torch.nan_to_num_(flat, nan=0.0, posinf=1e5, neginf=-1e5)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p).clone()


def average_buffers(module: torch.nn.Module, world_size: int) -> None:
    """Average the floating-point buffers (mean w, StyleGAN3's magnitude averages) over ranks."""
    if world_size == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world_size


def ema_beta(batch_size: int, cur_nimg: int, ema_kimg: float, ema_rampup: float) -> float:
    """Per-step decay for a half-life of ema_kimg thousand images, shortened early on (StyleGAN2-ADA)."""
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


class RealImageSampler:
    """Endless shuffled minibatches of real uint8 images for one rank; optional random x-flips (``mirror``)."""

    def __init__(self, images: np.ndarray | torch.Tensor, batch_size: int, seed: int, mirror: bool):
        self.images = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
        self.batch_size = batch_size
        self.mirror = mirror
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(self.images), generator=self.generator)
        self.position = 0

    def next(self) -> torch.Tensor:
        indices = []
        while len(indices) < self.batch_size:
            if self.position == len(self.order):
                self.order = torch.randperm(len(self.images), generator=self.generator)
                self.position = 0
            take = min(self.batch_size - len(indices), len(self.order) - self.position)
            indices.extend(self.order[self.position:self.position + take].tolist())
            self.position += take
        batch = self.images[indices]
        if self.mirror:
            flip = torch.rand(len(batch), generator=self.generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
        return batch


class GanTrainer:
    """Holds the networks and optimisers of one run on one rank; :meth:`run` trains until ``cfg.kimg``."""

    def __init__(self, images: np.ndarray | torch.Tensor, spec: DataSpec, out_dir: Path, cfg: TrainConfig,
                 g_cfg: GeneratorConfig, d_cfg: DiscriminatorConfig, aug_cfg: AugmentConfig,
                 device: torch.device, rank: int = 0, world_size: int = 1):
        self.spec, self.out_dir, self.cfg = spec, out_dir, cfg
        self.g_cfg, self.d_cfg, self.aug_cfg = g_cfg, d_cfg, aug_cfg
        self.device, self.rank, self.world_size = device, rank, world_size
        self.batch_per_rank = cfg.batch_size // world_size
        torch.manual_seed(cfg.seed)  # the same initial networks on every rank
        self.arch = arch_of(g_cfg)
        self.G = build_generator(g_cfg).to(device)
        self.D = Discriminator(d_cfg).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        torch.manual_seed(cfg.seed * 1000 + rank + 2)  # but independent augmentations per rank
        self.augment = AdaptiveAugment(aug_cfg, rgb=spec.rgb).to(device)
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.learning_rate, betas=betas, eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.d_learning_rate or cfg.learning_rate, betas=betas,
                                      eps=1e-8)
        self.sampler = RealImageSampler(images, self.batch_per_rank, cfg.seed * 1000 + rank, cfg.mirror)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank + 1)
        self.cur_nimg = 0
        self.step_index = 0
        self.ada_sign_sum = torch.zeros([], device=device)
        self.ada_count = torch.zeros([], device=device)
        self.use_amp = cfg.mixed_precision and device.type == "cuda"
        self.gamma = cfg.gamma(g_cfg.resolution)
        self.pl_mean = torch.zeros([], device=device)  # a of the path-length penalty (moving average of lengths)
        self.last = {k: torch.full([], float("nan"), device=device) for k in ("loss_G", "loss_D", "r1", "pl", "rt")}

    # --- checkpoints -------------------------------------------------------------------------------------------
    def generator_state(self) -> dict:
        """What synthesis needs: G_ema, the configurations and the data spec."""
        return {"format": CHECKPOINT_FORMAT, "arch": self.arch, "generator_config": asdict(self.g_cfg),
                "train_config": asdict(self.cfg), "data_spec": self.spec.to_dict(), "G_ema": self.G_ema.state_dict(),
                "cur_nimg": self.cur_nimg}

    def state(self) -> dict:
        """The full training state, from which ``resume`` continues."""
        return {**self.generator_state(), "discriminator_config": asdict(self.d_cfg),
                "augment_config": asdict(self.aug_cfg), "G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "augment_p": float(self.augment.p), "pl_mean": float(self.pl_mean), "step_index": self.step_index}

    def load_state(self, ckpt: dict) -> None:
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.G_ema.load_state_dict(ckpt["G_ema"])
        self.opt_G.load_state_dict(ckpt["opt_G"])
        self.opt_D.load_state_dict(ckpt["opt_D"])
        self.augment.set_p(ckpt["augment_p"])
        self.pl_mean.fill_(ckpt.get("pl_mean", 0.0))  # checkpoints from before the regulariser start at 0
        self.cur_nimg = int(ckpt["cur_nimg"])
        self.step_index = int(ckpt["step_index"])

    def broadcast_parameters(self) -> None:
        """Make every rank start from rank 0's networks (identical seeds already make them equal; be certain)."""
        if self.world_size == 1:
            return
        for module in (self.G, self.D, self.G_ema, self.augment):
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)
        self.augment.set_p(self.augment.p)

    def save_snapshot(self, full: bool) -> Path:
        """Generator snapshot, latest full state and sample grid; also a kept full snapshot when ``full``."""
        path = snapshot_path(self.out_dir, self.cur_nimg)
        write_atomic(path, lambda tmp: torch.save(self.generator_state(), tmp))
        for old in sorted(self.out_dir.glob(SNAPSHOT_GLOB))[:-self.cfg.keep_snapshots]:
            old.unlink()
        state = self.state()
        write_atomic(self.out_dir / LATEST_STATE, lambda tmp: torch.save(state, tmp))
        if full:
            write_atomic(full_snapshot_path(self.out_dir, self.cur_nimg), lambda tmp: torch.save(state, tmp))
        self.save_samples(self.out_dir / f"samples-{self.cur_nimg:09d}.png")
        return path

    def save_samples(self, path: Path) -> None:
        n = self.cfg.grid_size ** 2
        z = torch.from_numpy(np.random.RandomState(GRID_SEED).randn(n, self.g_cfg.z_dim).astype(np.float32))
        with torch.no_grad():
            images = torch.cat([self.G_ema(zb.to(self.device), noise_mode="const").float().cpu()
                                for zb in z.split(16)])
        save_image_grid(images.numpy(), path, self.cfg.grid_size)

    # --- one iteration -----------------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp)

    def latents(self, batch: int | None = None) -> torch.Tensor:
        return torch.randn(batch or self.batch_per_rank, self.g_cfg.z_dim, device=self.device, generator=self.noise)

    def mixed_ws(self, update_w_avg: bool, batch: int | None = None) -> torch.Tensor:
        """ws for one batch; with probability style_mixing_prob the layers from a random cutoff use a second z
        (StyleGAN Sec. 3.1). Drawn on the device and applied as a mask: no host sync."""
        ws = self.G.map(self.latents(batch), update_w_avg=update_w_avg)
        if self.cfg.style_mixing_prob <= 0:
            return ws
        cutoff = torch.randint(1, self.G.num_ws, [], generator=self.noise, device=self.device)
        mixing = torch.rand([], generator=self.noise, device=self.device) < self.cfg.style_mixing_prob
        second = torch.arange(self.G.num_ws, device=self.device) >= torch.where(mixing, cutoff, self.G.num_ws)
        return torch.where(second[None, :, None], self.G.map(self.latents(batch)), ws)

    def run_D(self, images: torch.Tensor) -> torch.Tensor:
        """D's logits [N] of images that are blurred (StyleGAN3's early-training blur), then augmented (ADA)."""
        sigma = self.cfg.blur_sigma(self.cur_nimg)
        if sigma > 0:
            images = gaussian_blur(images, sigma)
        return self.D(self.augment(images))

    def generator_step(self) -> None:
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        with self.autocast():
            fake = self.G.synthesize(self.mixed_ws(update_w_avg=True), update_emas=True)
            loss = generator_loss(self.run_D(fake).float())
        regularised = loss
        if self.cfg.pl_weight > 0 and self.step_index % self.cfg.pl_interval == 0:
            regularised = loss + self.path_length_term()
        self.opt_G.zero_grad(set_to_none=True)
        regularised.backward()
        all_reduce_gradients(self.G, self.world_size)
        self.opt_G.step()
        average_buffers(self.G, self.world_size)  # each rank averaged its own latents: keep the ranks identical
        self.last["loss_G"] = loss.detach()

    def path_length_term(self) -> torch.Tensor:
        """The lazy path-length penalty on batch / pl_batch_shrink fakes (float32, like R1)."""
        ws = self.mixed_ws(update_w_avg=False, batch=max(1, self.batch_per_rank // self.cfg.pl_batch_shrink))
        penalty, self.pl_mean = path_length_penalty(self.G.synthesize, ws, self.pl_mean, self.cfg.pl_decay,
                                                    world_size=self.world_size)
        self.pl_mean = self.pl_mean.detach()
        self.last["pl"] = penalty.detach()
        return penalty * (self.cfg.pl_weight * self.cfg.pl_interval)

    def real_batch(self) -> torch.Tensor:
        """The next real images, sent as uint8 and scaled to [-1, 1] on the device."""
        return self.sampler.next().to(self.device, non_blocking=True).float() / 127.5 - 1.0

    def discriminator_step(self) -> None:
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad(), self.autocast():
            fake = self.G.synthesize(self.mixed_ws(update_w_avg=False))
        real = self.real_batch()
        penalty = torch.zeros([], device=self.device)
        if self.step_index % self.cfg.r1_interval == 0 and self.gamma > 0:
            penalty, real_logits = r1_penalty(self.run_D, real, self.gamma * self.cfg.r1_interval)
            self.last["r1"] = penalty.detach() / self.cfg.r1_interval
        else:
            with self.autocast():
                real_logits = self.run_D(real)
        with self.autocast():
            fake_logits = self.run_D(fake.float())
        loss = discriminator_loss(real_logits.float(), fake_logits.float())
        self.opt_D.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        all_reduce_gradients(self.D, self.world_size)
        self.opt_D.step()
        self.ada_sign_sum += real_logits.detach().float().sign().sum()
        self.ada_count += real_logits.shape[0]
        self.last["loss_D"] = loss.detach()

    def update_ada(self) -> None:
        """ADA Sec. 3: after ada_interval steps, move p by the sign of r_t - target (on the device)."""
        stats = torch.stack([self.ada_sign_sum, self.ada_count])
        if self.world_size > 1:
            dist.all_reduce(stats)
        rt = stats[0] / stats[1]
        if self.cfg.augment:
            # one host read per ada_interval steps, as in the official code, so that augment needs none
            self.augment.set_p(ada_p_update(self.augment.p, rt, self.cfg.ada_target, stats[1], self.cfg.ada_kimg))
        self.last["rt"] = rt
        self.ada_sign_sum.zero_()
        self.ada_count.zero_()

    def update_ema(self) -> None:
        beta = ema_beta(self.cfg.batch_size, self.cur_nimg, self.cfg.ema_kimg, self.cfg.ema_rampup)
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

    # --- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> Path | None:
        """Train until cfg.kimg thousand images; returns the last checkpoint path (rank 0) or None."""
        total = int(self.cfg.kimg * 1000)
        is_main = self.rank == 0
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.cur_nimg == 0:
                save_image_grid(self.sampler.images[:self.cfg.grid_size ** 2].float().numpy() / 127.5 - 1,
                                self.out_dir / "reals.png", self.cfg.grid_size)
        log_path = self.out_dir / "training_log.jsonl"
        last = None
        started, nimg_at_start = time.time(), self.cur_nimg
        bar = tqdm(total=total, initial=min(self.cur_nimg, total), unit="img", disable=not is_main,
                   desc=f"train-gan {self.spec.class_name}")
        while self.cur_nimg < total:
            self.generator_step()
            self.discriminator_step()
            previous_nimg = self.cur_nimg
            self.step_index += 1
            self.cur_nimg += self.cfg.batch_size
            self.update_ema()
            if self.step_index % self.cfg.ada_interval == 0:
                self.update_ada()
            bar.update(min(self.cfg.batch_size, total - bar.n))
            if is_main and self.step_index % PROGRESS_INTERVAL == 0:
                bar.set_postfix(G=f"{float(self.last['loss_G']):.3f}", D=f"{float(self.last['loss_D']):.3f}",
                                p=f"{self.augment.p_host:.3f}")
            if is_due(previous_nimg, self.cur_nimg, self.cfg.snapshot_kimg) or self.cur_nimg >= total:
                if is_main:
                    last = self.save_snapshot(full=is_due(previous_nimg, self.cur_nimg, self.cfg.full_snapshot_kimg))
                    elapsed = time.time() - started
                    record = {"kimg": self.cur_nimg / 1000, **{k: float(v) for k, v in self.last.items()},
                              "augment_p": self.augment.p_host, "seconds": elapsed,
                              "images_per_second": (self.cur_nimg - nimg_at_start) / max(elapsed, 1e-9),
                              "checkpoint": last.name}
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
        bar.close()
        if self.world_size > 1:
            dist.barrier()  # ranks leave together: none tears the group down while rank 0 still writes
        if is_main and last is None:
            last = latest_checkpoint(self.out_dir)
        return last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_on_rank(rank: int, world_size: int, backend: str, port: int, images: np.ndarray | torch.Tensor,
                   spec: DataSpec, out_dir: Path, cfg: TrainConfig, g_cfg: GeneratorConfig,
                   d_cfg: DiscriminatorConfig, aug_cfg: AugmentConfig, device_type: str,
                   resume: dict | None) -> Path | None:
    if world_size > 1:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        device = torch.device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        trainer = GanTrainer(images, spec, out_dir, cfg, g_cfg, d_cfg, aug_cfg, device, rank, world_size)
        if resume is not None:
            trainer.load_state(resume)
        trainer.broadcast_parameters()
        return trainer.run()
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def train_gan(images: np.ndarray, spec: DataSpec, out_dir: Path, cfg: TrainConfig, g_cfg: GeneratorConfig,
              d_cfg: DiscriminatorConfig, aug_cfg: AugmentConfig | None = None, device: str = "cpu",
              world_size: int = 1, resume: Path | None = None, backend: str | None = None) -> Path:
    """Train one generator on ``images`` (uint8 [N, C, R, R]); returns the final checkpoint.

    ``world_size > 1`` spawns one process per device (CUDA: one per GPU with NCCL; CPU: gloo, used in tests).
    ``resume`` continues from a checkpoint of the same configuration; networks and ADA state are restored.
    """
    if cfg.batch_size % world_size:
        raise UserError(f"--batch {cfg.batch_size} must be divisible by the number of GPUs ({world_size}).")
    aug_cfg = aug_cfg or AugmentConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    resume_state = None
    if resume is not None:
        resume_state = load_checkpoint(resume)
        if "opt_G" not in resume_state:
            raise UserError(f"{resume} holds the generator only; resume from latest-state.pt or a "
                            f"full-snapshot-*.pt of the same folder.")
        g_cfg = generator_config(resume_state.get("arch", "stylegan2"), resume_state["generator_config"])
        d_cfg = DiscriminatorConfig(**resume_state["discriminator_config"])
        aug_cfg = AugmentConfig(**resume_state["augment_config"])
    if world_size == 1:
        return _train_on_rank(0, 1, "", 0, images, spec, out_dir, cfg, g_cfg, d_cfg, aug_cfg, device, resume_state)
    backend = backend or ("nccl" if device == "cuda" else "gloo")
    shared = torch.from_numpy(images).share_memory_()  # one copy in shared memory instead of one per process
    mp.spawn(_train_on_rank, nprocs=world_size, join=True,
             args=(world_size, backend, _free_port(), shared, spec, out_dir, cfg, g_cfg, d_cfg, aug_cfg, device,
                   resume_state))
    final = latest_checkpoint(out_dir)
    if final is None:
        raise RuntimeError(f"Training with {world_size} processes wrote no checkpoint to {out_dir}.")
    return final

