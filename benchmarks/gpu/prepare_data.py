"""The GPU kit's compact Kvasir-SEG: images resized to SIZE x SIZE as JPEG, masks as PNG, and the fixed case lists.

PNG images of all 1000 cases at 256 x 256 take about 90 MB, more than the kit may carry, so the kit stores JPEG
(quality 90, about 17 KB an image) and ``run.sh`` turns it into a raw nnU-Net dataset (PNG) on the device with
``nnunet-semi convert-2d``. The test cases and the labeled cases are drawn here, once, with a fixed seed, and written
as lists that ``make-semi`` reads, so that every run of the kit uses the same held-out test set and labels.

Usage: python prepare_data.py SOURCE -o DIR [--size 256] [--test-count 200] [--labeled-fraction 0.1] [--cases N]
SOURCE holds ``images/`` and ``masks/`` with matching file names (Kvasir-SEG's layout).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

IMAGE_ENDINGS = (".jpg", ".jpeg", ".png")


def source_cases(source: Path) -> list[str]:
    """Case ids with both an image and a mask, sorted."""
    images, masks = source / "images", source / "masks"
    if not images.is_dir() or not masks.is_dir():
        sys.exit(f"{source} must hold images/ and masks/ (Kvasir-SEG's layout); pass the Kvasir-SEG folder.")
    stems = {p.stem for p in masks.iterdir() if p.suffix.lower() in IMAGE_ENDINGS}
    cases = sorted(p.stem for p in images.iterdir() if p.suffix.lower() in IMAGE_ENDINGS and p.stem in stems)
    if not cases:
        sys.exit(f"No image in {images} has a mask of the same name in {masks}.")
    return cases


def find_file(folder: Path, stem: str) -> Path:
    return next(p for p in sorted(folder.iterdir()) if p.stem == stem and p.suffix.lower() in IMAGE_ENDINGS)


def write_case(source: Path, case: str, output: Path, size: int) -> None:
    image = Image.open(find_file(source / "images", case)).convert("RGB").resize((size, size), Image.BICUBIC)
    image.save(output / "images" / f"{case}.jpg", quality=90)
    mask = Image.open(find_file(source / "masks", case)).convert("L").resize((size, size), Image.NEAREST)
    mask.point(lambda v: 255 if v > 127 else 0).save(output / "masks" / f"{case}.png")


def split_cases(cases: list[str], test_count: int, labeled_fraction: float, seed: int) -> tuple[list, list]:
    """(test, labeled): ``test_count`` held-out cases, then ``labeled_fraction`` of the rest (at least 2)."""
    shuffled = random.Random(seed).sample(cases, len(cases))
    test, rest = shuffled[:test_count], shuffled[test_count:]
    labeled = rest[: max(2, round(labeled_fraction * len(rest)))]
    if len(rest) - len(labeled) < 1:
        sys.exit(f"{len(cases)} cases leave no unlabeled case after {test_count} test cases; use fewer test cases.")
    return sorted(test), sorted(labeled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="Kvasir-SEG folder (images/, masks/)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--test-count", type=int, default=200)
    parser.add_argument("--labeled-fraction", type=float, default=0.1)
    parser.add_argument("--cases", type=int, help="use only the first N cases (smoke runs)")
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()

    cases = source_cases(args.source)[: args.cases]
    test, labeled = split_cases(cases, args.test_count, args.labeled_fraction, args.seed)
    for folder in ("images", "masks"):
        (args.output / folder).mkdir(parents=True, exist_ok=True)
    for case in tqdm(cases, desc=f"Kvasir-SEG -> {args.size}x{args.size}", unit="case"):
        write_case(args.source, case, args.output, args.size)
    (args.output / "test.txt").write_text("\n".join(test) + "\n")
    (args.output / "labeled.txt").write_text("\n".join(labeled) + "\n")
    print(f"{len(cases)} cases: {len(test)} test, {len(labeled)} labeled, {len(cases) - len(test) - len(labeled)} "
          f"unlabeled -> {args.output}")


if __name__ == "__main__":
    main()
