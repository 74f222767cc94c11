"""FID against the real images of every generator snapshot of one or more ``train-gan`` runs, plotted against kimg.

    python benchmarks/bench_gan_fid.py sg2=gans_sg2/all sg3=gans_sg3/all -o gan_fid --images 500

Each RUN is ``[LABEL=]FOLDER``, a class folder of ``train-gan``'s output. For every ``network-snapshot-*.pt`` in it
(``train-gan --keep-snapshots`` large enough to keep them all): ``--images`` images from seeds 0..N-1 with the
snapshot's EMA generator (as ``synthesize`` draws them), mapped to 8 bits as ``synthesize`` writes them, and FID
against the class's real images at the GAN's resolution, prepared as the generator saw them in training (the
snapshot's data spec, without mirroring). Features and FID are ``nnunet-semi fid``'s (pytorch-fid's Inception, the
real images' features cached). Results are kept per snapshot in ``<output>/gan_fid.json``, so a rerun evaluates only
new snapshots; ``gan_fid.csv`` and ``gan_fid.png`` (FID against kimg, one line per run) are rewritten each time.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnunet_semi.files import write_atomic
from nnunet_semi.synthesis.data import DataSpec, from_unit_range, load_images, to_uint8
from nnunet_semi.synthesis.fid import (FidNetwork, cached_inception_features, frechet_distance, inception_features,
                                       load_fid_network)
from nnunet_semi.synthesis.generators import ClassGenerator, from_checkpoint
from nnunet_semi.synthesis.training import SNAPSHOT_GLOB, snapshot_kimg


def parse_run(text: str) -> tuple[str, Path]:
    label, _, folder = text.rpartition("=")
    folder = Path(folder)
    snapshots = sorted(folder.glob(SNAPSHOT_GLOB))
    if not snapshots:
        raise SystemExit(f"{folder}: no {SNAPSHOT_GLOB} (give a class folder of train-gan's output).")
    return label or folder.parent.name, folder


def chosen_snapshots(folder: Path, every: int) -> list[Path]:
    """Every ``every``-th snapshot of a run (1-based: the every-th, 2 every-th, ...) and its last one."""
    snapshots = sorted(folder.glob(SNAPSHOT_GLOB))
    return [s for i, s in enumerate(snapshots, 1) if i % every == 0 or i == len(snapshots)]


def generated_uint8(generator: ClassGenerator, num_images: int, device: str) -> np.ndarray:
    """[N, C, R, R] uint8 images of a snapshot's generator, seeds 0..N-1."""
    ranges = generator.spec.intensity_ranges
    batches = [to_uint8(torch.from_numpy(from_unit_range(images, ranges)), ranges).numpy()
               for _, images in generator.generate(list(range(num_images)), device=device)]
    return np.concatenate(batches)


def real_features(spec: DataSpec, network: FidNetwork, device: str, known: dict[str, np.ndarray]) -> np.ndarray:
    """Inception features of the real images a generator was trained on, read once per class and resolution."""
    key = f"{spec.dataset}/{spec.class_name}/{spec.resolution}/{spec.fit}"
    if key not in known:
        known[key] = cached_inception_features(network, load_images(spec, progress=False), device=device,
                                               desc="real")
    return known[key]


def snapshot_fid(snapshot: Path, num_images: int, network: FidNetwork, device: str,
                 known_real: dict[str, np.ndarray]) -> dict:
    generator = from_checkpoint(snapshot)
    real = real_features(generator.spec, network, device, known_real)
    fake = inception_features(network, generated_uint8(generator, num_images, device), device=device,
                              desc="generated")
    return {"kimg": snapshot_kimg(snapshot), "fid": frechet_distance(real, fake), "num_real": len(real),
            "num_generated": len(fake), "resolution": generator.spec.resolution}


def write_outputs(results: dict[str, dict[str, dict]], output: Path) -> None:
    write_atomic(output / "gan_fid.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    rows = [dict(run=label, snapshot=name, **r) for label, runs in results.items() for name, r in runs.items()]
    with open(output / "gan_fid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["run", "snapshot", "kimg", "fid", "num_real", "num_generated",
                                               "resolution"])
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in results.items():
        points = sorted((r["kimg"], r["fid"]) for r in runs.values())
        ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("kimg (real images shown to D, thousands)")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "gan_fid.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]FOLDER", help="class folders of train-gan output")
    parser.add_argument("-o", "--output", required=True, help="folder for gan_fid.json / .csv / .png")
    parser.add_argument("--images", type=int, default=500, help="generated images per snapshot (default 500)")
    parser.add_argument("--every", type=int, default=1,
                        help="evaluate every N-th snapshot of a run (and always its last one; default 1)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.images < 2 or args.every < 1:
        raise SystemExit("--images must be at least 2 (FID needs a covariance) and --every at least 1.")
    runs = [parse_run(r) for r in args.runs]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results_file = output / "gan_fid.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    network = load_fid_network(args.device)
    todo = [(label, s) for label, folder in runs for s in chosen_snapshots(folder, args.every)
            if s.name not in results.get(label, {}) or results[label][s.name]["num_generated"] != args.images]
    known_real: dict[str, np.ndarray] = {}
    for label, snapshot in tqdm(todo, desc="snapshots"):
        results.setdefault(label, {})[snapshot.name] = snapshot_fid(snapshot, args.images, network, args.device,
                                                                    known_real)
        write_outputs(results, output)  # after every snapshot: an interrupted run keeps what it measured
    write_outputs(results, output)
    for label, runs_ in results.items():
        print(label + ": " + ", ".join(f"{r['kimg']:.0f} kimg {r['fid']:.1f}"
                                       for r in sorted(runs_.values(), key=lambda r: r["kimg"])))


if __name__ == "__main__":
    main()
