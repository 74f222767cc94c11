"""``nnunet-semi train-gan``, ``synthesize`` and ``fid``: class-specific StyleGAN2-ADA / StyleGAN3-T generators for
raw datasets."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw
from nnunet_semi.synthesis.augment import AugmentConfig
from nnunet_semi.synthesis.classes import assign_classes, class_slug
from nnunet_semi.synthesis.data import DataSpec, build_spec, default_resolution, load_images
from nnunet_semi.synthesis.fid import load_fid_network
from nnunet_semi.synthesis.fid_report import (
    collect_pairs,
    fid_report,
    mixed_formats_note,
    real_images,
    write_report,
)
from nnunet_semi.synthesis.generators import load_generators
from nnunet_semi.synthesis.networks import DiscriminatorConfig
from nnunet_semi.synthesis.synthesize import counts_per_class, synthesize, synthetic_counts
from nnunet_semi.synthesis.training import (
    ARCHITECTURES,
    TrainConfig,
    generator_config,
    load_checkpoint,
    resume_checkpoint,
    train_gan,
)

# Defaults that differ between the architectures' official configurations (StyleGAN2-ADA "auto" / StyleGAN3-T).
ARCH_DEFAULTS = {
    "stylegan2": {"pl_weight": 2.0, "style_mixing_prob": 0.9, "blur_init_sigma": 0.0, "d_lr": None,
                  "channel_base": 16384},
    "stylegan3-t": {"pl_weight": 0.0, "style_mixing_prob": 0.0, "blur_init_sigma": 10.0, "d_lr": 0.002,
                    "channel_base": 32768},
}
from nnunet_semi.synthesis.writer import MANIFEST_NAME, InPlaceTarget, NewDatasetTarget, read_synthesis_manifest


def resolve_device(device: str, gpus: int) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu.")
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: must be at least 1.")
    if gpus > 1 and (device != "cuda" or gpus > torch.cuda.device_count()):
        raise UserError(f"--gpus {gpus}: needs {gpus} CUDA devices, found "
                        f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}.")
    return device


def class_folders(classes: list[str], output: Path) -> dict[str, Path]:
    folders = {c: output / class_slug(c) for c in classes}
    if len(set(folders.values())) != len(folders):
        raise UserError(f"Class names {classes} do not give distinct folder names; rename the classes.")
    return folders


def run_train_gan(args: argparse.Namespace) -> int:
    name = raw.resolve_dataset(args.dataset)
    device = resolve_device(args.device, args.gpus)
    if (args.batch < 1 or args.kimg <= 0 or args.snapshot_kimg <= 0 or args.full_snapshot_kimg <= 0
            or args.keep_snapshots < 1):
        raise UserError("--batch, --kimg, --snapshot-kimg, --full-snapshot-kimg and --keep-snapshots must be "
                        "positive.")
    defaults = ARCH_DEFAULTS[args.arch]
    pl_weight = defaults["pl_weight"] if args.pl_weight is None else args.pl_weight
    if pl_weight < 0:
        raise UserError(f"--pl-weight must be >= 0 (0 switches the path-length regulariser off); got {pl_weight}.")
    channel_base = args.channel_base or defaults["channel_base"]
    classes = assign_classes(name, args.classes, labeled_only=args.labeled_only)
    folders = class_folders(list(classes), Path(args.output))
    resolution = args.resolution or default_resolution(name, [r for refs in classes.values() for r in refs])
    cfg = TrainConfig(kimg=args.kimg, batch_size=args.batch, learning_rate=args.lr, r1_gamma=args.gamma,
                      augment=not args.no_ada, ada_target=args.ada_target, ada_kimg=args.ada_kimg,
                      mirror=args.mirror, snapshot_kimg=args.snapshot_kimg,
                      full_snapshot_kimg=args.full_snapshot_kimg, keep_snapshots=args.keep_snapshots,
                      seed=args.seed, mixed_precision=not args.no_amp, ema_kimg=args.ema_kimg, pl_weight=pl_weight,
                      style_mixing_prob=defaults["style_mixing_prob"], blur_init_sigma=defaults["blur_init_sigma"],
                      d_learning_rate=defaults["d_lr"])
    occupied = [str(f) for f in folders.values() if f.is_dir() and resume_checkpoint(f) is not None]
    if occupied and not args.resume:
        raise UserError(f"{', '.join(occupied)} already hold(s) checkpoints; pass --resume to continue or choose "
                        f"another --output.")
    for class_name, refs in classes.items():
        folder = folders[class_name]
        resume = resume_checkpoint(folder) if args.resume and folder.is_dir() else None
        if resume is not None:
            spec = DataSpec.from_dict(load_checkpoint(resume)["data_spec"])
            if spec.dataset != name or spec.class_name != class_name:
                raise UserError(f"--resume: {resume} was trained on class '{spec.class_name}' of {spec.dataset}, "
                                f"not '{class_name}' of {name}.")
            print(f"class '{class_name}': resuming from {resume}")
        else:
            spec = build_spec(name, class_name, refs, resolution, args.fit)
        print(f"class '{class_name}': {len(spec.real_images)} images at {spec.resolution}x{spec.resolution}, "
              f"{spec.channels} channel(s) -> {folder}")
        images = load_images(spec)
        g_fields = dict(resolution=spec.resolution, img_channels=spec.channels, z_dim=args.z_dim, w_dim=args.z_dim,
                        mapping_layers=args.mapping_layers, channel_base=channel_base, channel_max=args.channel_max)
        if args.arch == "stylegan3-t":
            g_fields["magnitude_ema_beta"] = 0.5 ** (args.batch / 20_000)  # half-life of 20 kimg (Appendix F)
        g_cfg = generator_config(args.arch, g_fields)
        d_cfg = DiscriminatorConfig(resolution=spec.resolution, img_channels=spec.channels,
                                    channel_base=channel_base, channel_max=args.channel_max)
        final = train_gan(images, spec, folder, cfg, g_cfg, d_cfg, AugmentConfig(), device=device,
                          world_size=args.gpus, resume=resume)
        print(f"class '{class_name}': final checkpoint {final}")
    return 0


def add_train_gan_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-gan", help="train one StyleGAN2-ADA or StyleGAN3-T generator per image class of a raw dataset",
        description="Train class-specific StyleGAN2-ADA or StyleGAN3-T (--arch) generators on the real training "
                    "images of an nnU-Net raw dataset (2D images, or 2D slices of 3D cases along nnU-Net's 2d "
                    "slicing axis). Writes OUTPUT/<class>/network-snapshot-*.pt (generator only), latest-state.pt "
                    "(for --resume), full-snapshot-*.pt, sample grids and training_log.jsonl.")
    p.add_argument("dataset", help="raw dataset id or name, e.g. 900 or Dataset900_Kvasir64")
    p.add_argument("-o", "--output", required=True, help="folder for the generators (one subfolder per class)")
    p.add_argument("--classes", default="all",
                   help="'all' (one generator), 'mask' (set of foreground labels present), 'mask:LABEL' "
                        "(LABEL present or not), or a .csv/.json file mapping case id to class")
    p.add_argument("--labeled-only", action="store_true", help="use labeled cases only (as SRA-Seg does)")
    p.add_argument("--resolution", type=int, default=None,
                   help="square training size, power of two (default: nearest to the median image size, 64..512)")
    p.add_argument("--fit", default="resize", help="non-square images: 'resize' (default) or 'pad'")
    p.add_argument("--arch", default="stylegan2", choices=list(ARCHITECTURES),
                   help="generator: stylegan2 (default) or stylegan3-t (alias-free, SSGNet's; no path-length "
                        "regulariser or style mixing, discriminator blur over the first 200 kimg, D lr 0.002)")
    p.add_argument("--kimg", type=float, default=1000.0, help="thousands of real images to show D (default 1000)")
    p.add_argument("--batch", type=int, default=32, help="total batch size over all GPUs (default 32)")
    p.add_argument("--lr", type=float, default=0.0025, help="Adam learning rate of G and D (default 0.0025)")
    p.add_argument("--gamma", type=float, default=None,
                   help="R1 weight (default 0.0002 * resolution^2 / batch, StyleGAN2-ADA's heuristic)")
    p.add_argument("--pl-weight", type=float, default=None,
                   help="weight of StyleGAN2's path-length regulariser, applied every 4 steps on half the batch "
                        "(default: 2 for stylegan2, 0 for stylegan3-t, the official configurations; 0 is off)")
    p.add_argument("--mirror", action="store_true", help="random horizontal flips of the real images")
    p.add_argument("--no-ada", action="store_true", help="disable adaptive discriminator augmentation")
    p.add_argument("--ada-target", type=float, default=0.6, help="ADA target for E[sign(D(real))] (default 0.6)")
    p.add_argument("--ada-kimg", type=float, default=500.0,
                   help="ADA speed: kimg for p to go from 0 to 1 (default 500; use ~100 for short runs)")
    p.add_argument("--ema-kimg", type=float, default=10.0, help="half-life of the generator EMA in kimg")
    p.add_argument("--snapshot-kimg", type=float, default=4.0,
                   help="every N kimg: generator snapshot, latest-state.pt, sample grid, log line (default 4)")
    p.add_argument("--full-snapshot-kimg", type=float, default=200.0,
                   help="every N kimg a kept full-snapshot-*.pt with D and the optimisers (default 200)")
    p.add_argument("--keep-snapshots", type=int, default=5, help="number of generator snapshots kept per class")
    p.add_argument("--channel-base", type=int, default=None,
                   help="feature maps: min(channel_base / r, channel_max) at resolution r for stylegan2 (default "
                        "16384), min(channel_base / 2 / cutoff, channel_max) for stylegan3-t (default 32768)")
    p.add_argument("--channel-max", type=int, default=512, help="maximum feature maps (default 512)")
    p.add_argument("--z-dim", type=int, default=512, help="latent and style dimension (default 512)")
    p.add_argument("--mapping-layers", type=int, default=2, help="mapping network depth (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, latents and augmentation (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda if available, else cpu")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (torch.distributed, one process each)")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 mixed precision on CUDA")
    p.add_argument("--resume", action="store_true",
                   help="continue each class from its latest checkpoint in OUTPUT (until --kimg in total)")
    p.set_defaults(func=run_train_gan)


def run_synthesize(args: argparse.Namespace) -> int:
    name = raw.resolve_dataset(args.dataset)
    device = resolve_device(args.device, 1)
    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: must be positive.")
    if (args.new_id is None) != (args.new_name is None):
        raise UserError("Give both --new-id and --new-name to create a new dataset, or neither to add in place.")
    generators = load_generators(Path(args.generators) if args.generators else None, args.generator or [], name,
                                 Path(args.stylegan_repo) if args.stylegan_repo else None, args.truncation)
    real_counts = {g.class_name: len(g.spec.real_images) for g in generators}
    existing = synthetic_counts(read_synthesis_manifest(raw.raw_root() / name))
    counts = counts_per_class(real_counts, args.per_class, args.total, args.proportions, args.strategy, existing)
    for g in generators:
        print(f"class '{g.class_name}': {counts[g.class_name]} images from {g.source} "
              f"({real_counts[g.class_name]} real, {existing.get(g.class_name, 0)} synthetic already)")
    if not any(counts.values()):
        print("Every class already has the images asked for: nothing to synthesise.")
        return 0
    target = NewDatasetTarget(name, args.new_id, args.new_name) if args.new_id is not None else InPlaceTarget(name)
    keep = args.fid_max_images if args.fid_report else 0
    result = synthesize(target, generators, counts, args.seed, device, args.batch, keep, " ".join(sys.argv))
    print(f"wrote {len(result.cases)} synthetic cases into {raw.raw_root() / result.dataset} "
          f"(manifest {MANIFEST_NAME}). Next: preprocess the new cases with the plans your baseline uses: "
          f"'nnunet-semi plan {result.dataset}' for a semi-supervised dataset made by make-semi (it shares the "
          f"labeled-only twin's plans), else nnUNetv2_plan_and_preprocess -d {int(result.dataset[7:10])} "
          f"--verify_dataset_integrity")
    if args.fid_report:
        pairs = {g.class_name: (real_images(g.spec.dataset, g.spec, args.fid_max_images),
                                result.samples[g.class_name]) for g in generators if g.class_name in result.samples}
        report = fid_report(pairs, load_fid_network(device), "real training images of each class",
                            f"{result.dataset} (this run)", device=device)
        grid = write_report(report, pairs, Path(args.fid_report))
        print_fid(report, Path(args.fid_report), grid)
    return 0


def print_fid(report: dict, json_path: Path, grid: Path) -> None:
    print(f"FID {report['fid']:.2f} ({report['num_real']} real vs {report['num_synthetic']} synthetic)")
    for class_name, entry in report.get("per_class", {}).items():
        value = "n/a (fewer than 2 images)" if entry["fid"] is None else f"{entry['fid']:.2f}"
        print(f"  {class_name}: FID {value} ({entry['num_real']} vs {entry['num_synthetic']})")
    print(f"report {json_path}, grid {grid}")


def add_synthesize_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synthesize", help="write GAN images into a raw dataset as unlabeled synthetic cases",
        description="Generate images with class generators (train-gan output, or official StyleGAN2-ADA/StyleGAN3 "
                    "pickles) and add them to a raw dataset as unlabeled cases synth_<class>_NNNNNN (label entirely "
                    "the ignore label), atomically, recording generator, seed and class of every image in "
                    "synthesis_manifest.json.")
    p.add_argument("dataset", help="raw dataset id or name whose format, spacing and cases are used")
    p.add_argument("--generators", help="train-gan output folder (latest checkpoint of each class)")
    p.add_argument("--generator", action="append", metavar="[CLASS=]PATH",
                   help="one generator: our checkpoint (.pt), or an official StyleGAN pickle (.pkl, needs CLASS= and "
                        "--stylegan-repo); repeat for several classes")
    p.add_argument("--stylegan-repo", help="your checkout of NVlabs/stylegan2-ada-pytorch or stylegan3, to read its "
                                           "network pickles")
    p.add_argument("--per-class", type=int, help="images per class")
    p.add_argument("--total", help="images in total: a number, or P%% of the real images (e.g. 20%%)")
    p.add_argument("--proportions", default="keep",
                   help="how --total is split: 'keep' (real class proportions, default) or 'balance' (smallest "
                        "classes first, counting synthetic images already in the dataset)")
    p.add_argument("--strategy", help="SSGNet's class-balanced settings: 'balance' (every class up to the majority "
                                      "class's real count, counting synthetic images already there), "
                                      "'balance+20%%', 'balance+50%%' (that level plus 20%% / 50%% of it)")
    p.add_argument("--new-id", type=int, help="create a new dataset with this id: a copy of DATASET plus the images")
    p.add_argument("--new-name", help="name of the new dataset (Dataset<id>_<name>)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the first image (default: one past the largest seed already in the manifest)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default 1: no truncation)")
    p.add_argument("--batch", type=int, default=16, help="images generated per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda if available, else cpu")
    p.add_argument("--fid-report", metavar="JSON", help="compute per-class FID of the new images against the real "
                                                        "images of their class; write JSON and a PNG grid next to it")
    p.add_argument("--fid-max-images", type=int, default=2000, help="images per class and set used for FID")
    p.set_defaults(func=run_synthesize)


def run_fid(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, 1)
    if args.max_images is not None and args.max_images < 2:
        raise UserError(f"--max-images {args.max_images}: must be at least 2.")
    pairs = collect_pairs(args.real, args.synthetic, args.max_images)
    note = mixed_formats_note(pairs)
    if note:
        print(note)
    report = fid_report(pairs, load_fid_network(device), args.real, args.synthetic, args.batch, device)
    grid = write_report(report, pairs, Path(args.output))
    print_fid(report, Path(args.output), grid)
    return 0


def add_fid_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fid", help="Frechet Inception Distance between real and synthetic images (overall and per class)",
        description="FID (pytorch-fid's network and computation, TF Inception-v3 weights) between REAL and SYNTH, "
                    "each a folder of images or a raw dataset (real cases of REAL, synth_* cases of SYNTH; per class "
                    "when SYNTH has a synthesis manifest). Writes a JSON report and a PNG grid of real vs synthetic.")
    p.add_argument("real", help="folder of images, or raw dataset id/name (its real cases)")
    p.add_argument("synthetic", help="folder of images, or raw dataset id/name (its synth_* cases)")
    p.add_argument("-o", "--output", default="fid_report.json", help="JSON report (grid: same name, .png)")
    p.add_argument("--max-images", type=int, default=None, help="at most N images per set (per class)")
    p.add_argument("--batch", type=int, default=50, help="images per Inception forward pass (default 50)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda if available, else cpu")
    p.set_defaults(func=run_fid)


def register(subparsers) -> None:
    add_train_gan_parser(subparsers)
    add_synthesize_parser(subparsers)
    add_fid_parser(subparsers)
