"""Throughput of the synthesis part: GAN training images per second, generation, writing, FID features.

Self-contained (random 8-bit images, a throw-away raw dataset in a temporary folder):

* ``train``: full StyleGAN2-ADA (or ``--arch stylegan3-t``) iterations (G step, D step with R1 every 16 steps, EMA,
  ADA) at a fixed ADA p, timed after warm-up; reported as real images shown to D per second (the "kimg" unit of
  training);
* ``generate``: EMA-generator forward passes with constant noise, images per second;
* ``synthesize``: generation plus writing PNG cases (image + ignore label) into a raw dataset, images per second;
* ``fid`` (``--fid``): Inception pool3 features at 299x299, images per second.

    python benchmarks/bench_synthesis.py                     # the CPU Kvasir configuration (64 px, small widths)
    python benchmarks/bench_synthesis.py --channel-base 16384 --channel-max 512 --device cuda   # paper widths
    python benchmarks/bench_synthesis.py --arch stylegan3-t  # same widths' cap, StyleGAN3-T's schedule

Prints a table and writes it as JSON to ``--output`` (default benchmarks/results/synthesis.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def timed(fn, repeats: int, warmup: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def bench_training(args, g_cfg, d_cfg, spec) -> float:
    from nnunet_semi.synthesis.augment import AugmentConfig
    from nnunet_semi.synthesis.cli import ARCH_DEFAULTS
    from nnunet_semi.synthesis.training import GanTrainer, TrainConfig

    images = np.random.default_rng(0).integers(0, 256, (256, 3, args.resolution, args.resolution), dtype=np.uint8)
    defaults = ARCH_DEFAULTS[args.arch]
    cfg = TrainConfig(batch_size=args.batch, augment=False, mixed_precision=not args.no_amp,
                      pl_weight=defaults["pl_weight"], style_mixing_prob=defaults["style_mixing_prob"],
                      blur_init_sigma=defaults["blur_init_sigma"])
    trainer = GanTrainer(images, spec, Path(tempfile.gettempdir()), cfg, g_cfg, d_cfg, AugmentConfig(),
                         torch.device(args.device))
    trainer.augment.set_p(args.ada_p)

    def iteration():
        trainer.generator_step()
        trainer.discriminator_step()
        trainer.step_index += 1
        trainer.cur_nimg += args.batch
        trainer.update_ema()

    # 16 iterations include exactly one R1 step, as in training
    seconds = timed(iteration, repeats=args.iterations, warmup=2)
    return args.batch / seconds


def bench_generation(args, generator) -> float:
    z = torch.randn(args.gen_batch, generator.z_dim, device=args.device)
    with torch.no_grad():
        seconds = timed(lambda: generator(z, noise_mode="const"), repeats=5, warmup=1)
    return args.gen_batch / seconds


def bench_synthesize(args, generator, spec) -> float:
    """generate + write PNG cases into a throw-away raw dataset through the real ``synthesize`` code path."""
    from nnunet_semi.synthesis.generators import KIND_OURS, ClassGenerator
    from nnunet_semi.synthesis.synthesize import synthesize
    from nnunet_semi.synthesis.writer import InPlaceTarget

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["nnUNet_raw"] = tmp
        folder = Path(tmp) / "Dataset999_Bench"
        for sub in ("imagesTr", "labelsTr"):
            (folder / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((args.resolution, args.resolution, 3), np.uint8)).save(
            folder / "imagesTr" / "real_0000.png")
        Image.fromarray(np.zeros((args.resolution, args.resolution), np.uint8)).save(folder / "labelsTr" / "real.png")
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "fg": 1},
            "numTraining": 1, "file_ending": ".png"}))
        source = ClassGenerator("all", Path("bench.pt"), KIND_OURS, generator, generator.z_dim, spec)
        start = time.perf_counter()
        synthesize(InPlaceTarget("Dataset999_Bench"), [source], {"all": args.num_synth}, 0, args.device,
                   args.gen_batch, 0, "bench")
        return args.num_synth / (time.perf_counter() - start)


def bench_fid(args) -> float:
    from nnunet_semi.synthesis.fid import inception_features, load_fid_network

    network = load_fid_network(args.device)
    images = list(np.random.default_rng(0).integers(0, 256, (50, 3, args.resolution, args.resolution), np.uint8))
    inception_features(network, images[:10], 10, args.device)
    start = time.perf_counter()
    inception_features(network, images, 25, args.device)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="stylegan2", choices=["stylegan2", "stylegan3-t"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--channel-base", type=int, default=2048)
    parser.add_argument("--channel-max", type=int, default=256)
    parser.add_argument("--z-dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="training batch")
    parser.add_argument("--iterations", type=int, default=16, help="timed training iterations (16 = one R1 step)")
    parser.add_argument("--ada-p", type=float, default=0.2, help="fixed augmentation probability while timing")
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--num-synth", type=int, default=200, help="cases written in the synthesize benchmark")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--fid", action="store_true", help="also time Inception feature extraction")
    parser.add_argument("--output", default="benchmarks/results/synthesis.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nnunet_semi.synthesis.data import DataSpec
    from nnunet_semi.synthesis.networks import DiscriminatorConfig
    from nnunet_semi.synthesis.training import build_generator, generator_config

    g_cfg = generator_config(args.arch, dict(resolution=args.resolution, img_channels=3, z_dim=args.z_dim,
                                             w_dim=args.z_dim, channel_base=args.channel_base,
                                             channel_max=args.channel_max))
    d_cfg = DiscriminatorConfig(resolution=args.resolution, img_channels=3, channel_base=args.channel_base,
                                channel_max=args.channel_max)
    spec = DataSpec(dataset="Dataset999_Bench", class_name="all", resolution=args.resolution, channels=3, rgb=True,
                    fit="resize", slice_axis=0, intensity_ranges=[[0.0, 255.0]] * 3, spacing=[999.0, 1.0, 1.0],
                    natural_image=True, output_size=[args.resolution, args.resolution])
    generator = build_generator(g_cfg).to(args.device).eval()
    results = {"device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or 'unknown'})",
               "arch": args.arch,
               "threads": args.threads, "resolution": args.resolution, "channel_base": args.channel_base,
               "channel_max": args.channel_max, "batch": args.batch,
               "generator_parameters": sum(p.numel() for p in generator.parameters()),
               "train_images_per_second": bench_training(args, g_cfg, d_cfg, spec),
               "generate_images_per_second": bench_generation(args, generator),
               "synthesize_images_per_second": bench_synthesize(args, generator, spec)}
    if args.fid:
        results["fid_features_images_per_second"] = bench_fid(args)
    results["kimg_per_hour"] = results["train_images_per_second"] * 3.6
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
