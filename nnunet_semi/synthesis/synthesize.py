"""How many images per class, and the generation loop that streams them into a :mod:`writer` target.

Counts (``synthesize``), with synthetic images of each class already in the dataset counted where balance matters:

* ``--per-class N`` gives every class N images.
* ``--strategy`` is one of SSGNet's class-balanced settings: ``balance`` fills every class up to the majority
  class's number of real images M; ``balance+P%`` up to M (1 + P / 100), i.e. the balanced level plus P % of it for
  every class (SSGNet's ``balance+20%`` and ``balance+50%``). Rerunning it adds nothing once the level is reached.
* ``--total T`` (a number, or ``P%`` of the number of real images of the generators' classes) is split by
  ``--proportions``: ``keep`` (proportional to the real images per class, largest remainder rounding) or
  ``balance`` (fills up the smallest classes first, so that real + synthetic counts become as equal as possible;
  classes already above the level get none).
"""
from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw
from nnunet_semi.synthesis.classes import class_slug
from nnunet_semi.synthesis.data import typical_size
from nnunet_semi.synthesis.generators import ClassGenerator
from nnunet_semi.synthesis.writer import CaseFileWriter, InPlaceTarget, NewDatasetTarget, next_case_index

PROPORTIONS = ("keep", "balance")
STRATEGY = re.compile(r"balance(?:\+(?P<extra>\d+(?:\.\d+)?)%)?")


def parse_total(total: str, num_real: int) -> int:
    """``'500'`` -> 500; ``'20%'`` -> 20 % of ``num_real`` (rounded)."""
    text = total.strip()
    try:
        value = round(float(text[:-1]) / 100.0 * num_real) if text.endswith("%") else int(text)
    except ValueError:
        raise UserError(f"--total {total}: expected a number of images (e.g. 500) or a percentage of the real "
                        f"images (e.g. 20%).") from None
    if value < 1:
        raise UserError(f"--total {total}: gives {value} images; must be at least 1.")
    return value


def proportional_counts(real_counts: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` in proportion to ``real_counts`` (largest remainder, ties by class order)."""
    weight = sum(real_counts.values())
    exact = {c: total * n / weight for c, n in real_counts.items()}
    counts = {c: math.floor(v) for c, v in exact.items()}
    by_remainder = sorted(real_counts, key=lambda c: -(exact[c] - counts[c]))
    for c in by_remainder[:total - sum(counts.values())]:
        counts[c] += 1
    return counts


def balanced_counts(real_counts: dict[str, int], total: int) -> dict[str, int]:
    """Give each next synthetic image to the class with the fewest real + synthetic images (water filling)."""
    counts = dict.fromkeys(real_counts, 0)
    for _ in range(total):
        smallest = min(real_counts, key=lambda c: real_counts[c] + counts[c])
        counts[smallest] += 1
    return counts


def strategy_counts(real_counts: dict[str, int], existing: dict[str, int], strategy: str) -> dict[str, int]:
    """SSGNet's ``balance`` / ``balance+P%``: the images each class needs to reach the majority class's real count
    M (times 1 + P / 100), given its real and already synthesised images."""
    match = STRATEGY.fullmatch(strategy.strip())
    if match is None:
        raise UserError(f"--strategy {strategy}: choose 'balance' or 'balance+P%' (e.g. balance+20%, balance+50%).")
    level = round(max(real_counts.values()) * (1 + float(match["extra"] or 0) / 100))
    return {c: max(0, level - n - existing.get(c, 0)) for c, n in real_counts.items()}


def counts_per_class(real_counts: dict[str, int], per_class: int | None, total: str | None, proportions: str,
                     strategy: str | None = None, existing: dict[str, int] | None = None) -> dict[str, int]:
    """Images to synthesise per class from exactly one of ``per_class``, ``total`` (+ ``proportions``) and
    ``strategy``; ``existing`` counts the synthetic images of each class already in the dataset."""
    existing = existing or {}
    if sum(option is not None for option in (per_class, total, strategy)) != 1:
        raise UserError("Give exactly one of --per-class N, --total N|P% and --strategy balance|balance+P%.")
    if strategy is not None:
        return strategy_counts(real_counts, existing, strategy)
    if per_class is not None:
        if per_class < 1:
            raise UserError(f"--per-class {per_class}: must be at least 1.")
        return dict.fromkeys(real_counts, per_class)
    if proportions not in PROPORTIONS:
        raise UserError(f"--proportions {proportions}: choose {' or '.join(PROPORTIONS)}.")
    n = parse_total(total, sum(real_counts.values()))
    if proportions == "keep":
        return proportional_counts(real_counts, n)
    return balanced_counts({c: k + existing.get(c, 0) for c, k in real_counts.items()}, n)


def synthetic_counts(manifest: dict) -> dict[str, int]:
    """Synthetic images per class recorded in a synthesis manifest."""
    counts: dict[str, int] = {}
    for entry in manifest["images"].values():
        counts[entry["class"]] = counts.get(entry["class"], 0) + 1
    return counts


@dataclass
class SynthesisResult:
    dataset: str
    cases: list[str]
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)  # class -> uint8 [C, R, R] kept for FID


def default_seed_start(manifest: dict) -> int:
    """One past the largest seed used before in this dataset, so that repeated runs add new images."""
    seeds = [int(v["seed"]) for v in manifest["images"].values()]
    return max(seeds) + 1 if seeds else 0


def to_uint8_display(images: np.ndarray) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8, the same mapping as the real images' [lo, hi] -> [0, 255]."""
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def case_prefix(class_name: str) -> str:
    return f"{raw.SYNTHETIC_PREFIX}{class_slug(class_name)}_"


def generated_cases(generator: ClassGenerator, seeds: list[int], first_index: int, device: str,
                    batch_size: int) -> Iterator[tuple[str, int, np.ndarray]]:
    """(case id, seed, image in [-1, 1]) per seed; case ids ``synth_<class>_NNNNNN`` numbered from first_index."""
    index = first_index
    for chunk, images in generator.generate(seeds, device=device, batch_size=batch_size):
        for seed, image in zip(chunk, images):
            yield f"{case_prefix(generator.class_name)}{index:06d}", seed, image
            index += 1


def case_writer(target: InPlaceTarget | NewDatasetTarget, generators: list[ClassGenerator]) -> CaseFileWriter:
    """A writer in the format of the target's cases, after checking that every generator fits it."""
    example = next(iter(target.cases.values()))["images"]
    writer = CaseFileWriter(target.dataset_json, example, raw.ignore_label_value(target.dataset_json["labels"]))
    for g in generators:
        writer.check_compatible(g.spec)
        if g.spec.output_size is None:  # generators trained before specs recorded it
            g.spec.output_size = typical_size(g.spec)
    return writer


def synthesize(target: InPlaceTarget | NewDatasetTarget, generators: list[ClassGenerator], counts: dict[str, int],
               seed_start: int | None, device: str, batch_size: int, keep_samples: int,
               command: str) -> SynthesisResult:
    """Generate ``counts[class]`` images per class into ``target`` and commit it (or discard it on any error).

    Seeds run consecutively over the classes from ``seed_start``; the first ``keep_samples`` images of each class
    are returned as uint8 for FID.
    """
    result = SynthesisResult(target.dataset_name, [])
    try:
        writer = case_writer(target, generators)
        manifest = target.manifest
        seed = default_seed_start(manifest) if seed_start is None else seed_start
        run = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": command, "truncation_psi": generators[0].truncation_psi, "seed_start": seed,
               "classes": {}}
        existing = set(target.cases) | set(manifest["images"])
        with tqdm(total=sum(counts.values()), unit="img", desc="synthesize") as bar:
            for g in (g for g in generators if counts[g.class_name] > 0):
                seeds = list(range(seed, seed + counts[g.class_name]))
                seed += len(seeds)
                source = str(g.source.resolve())
                run["classes"][g.class_name] = {"generator": source, "generator_kind": g.kind,
                                                "num_images": len(seeds), "data_spec": g.spec.to_dict()}
                first = next_case_index(existing, case_prefix(g.class_name))
                kept = result.samples.setdefault(g.class_name, [])
                for case, case_seed, image in generated_cases(g, seeds, first, device, batch_size):
                    writer.write(target.staging, case, image, g.spec)
                    manifest["images"][case] = {"class": g.class_name, "seed": case_seed, "generator": source,
                                                "run": len(manifest["runs"])}
                    result.cases.append(case)
                    if len(kept) < keep_samples:
                        kept.append(to_uint8_display(image))
                    bar.update()
        manifest["runs"].append(run)
    except BaseException:
        target.discard()
        raise
    target.commit(result.cases)
    return result
