"""Cross-validation splits for semi-supervised datasets: folds of labeled groups, unlabeled cases always trained on.

Cases of one group (e.g. the ED and ES frames of one ACDC patient) always fall into the same fold. The labeled-only
twin and the fully labeled twin get the same validation folds, so every compared model is validated on the same
cases.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.crossval_split import generate_crossval_split
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.planners.raw import (
    read_dataset_json,
    reader_writer_for,
    resolve_dataset,
    save_json_atomic,
    training_cases,
)

NNUNET_SPLIT_SEED = 12345  # the seed nnU-Net uses for its own 5-fold splits


def group_by_regex(cases: Iterable[str], pattern: str) -> dict[str, str]:
    """case -> group: the first capture group of ``pattern`` (or the whole match) found in the case id."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise UserError(f"--group-regex '{pattern}' is not a valid regular expression: {e}.") from None
    groups = {}
    for case in cases:
        match = regex.search(case)
        if match is None:
            raise UserError(f"--group-regex '{pattern}' does not match case '{case}'.")
        groups[case] = match.group(1) if regex.groups else match.group(0)
        if not groups[case]:
            raise UserError(f"--group-regex '{pattern}' matches an empty string in case '{case}', so every case "
                            f"would fall into one group; use a pattern such as 'patient\\d+'.")
    return groups


def group_by_mapping_file(cases: Iterable[str], path: str | Path) -> dict[str, str]:
    """case -> group from a JSON object or a two-column CSV (case, group), header optional."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Group mapping file {path} does not exist.")
    if path.suffix.lower() == ".json":
        mapping = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    else:
        with open(path, newline="") as f:
            mapping = {row[0].strip(): row[1].strip() for row in csv.reader(f) if len(row) >= 2}
    cases = list(cases)
    missing = [c for c in cases if c not in mapping]
    if missing:
        raise UserError(f"Group mapping {path} has no entry for {len(missing)} cases, e.g. {missing[:5]}.")
    return {c: mapping[c] for c in cases}


def make_groups(cases: Iterable[str], group_regex: str | None = None,
                group_file: str | Path | None = None) -> dict[str, str]:
    """case -> group; every case is its own group unless a regex or a mapping file says otherwise."""
    if group_regex and group_file:
        raise UserError("Give either --group-regex or --group-file, not both.")
    if group_regex:
        return group_by_regex(cases, group_regex)
    if group_file:
        return group_by_mapping_file(cases, group_file)
    return {c: c for c in cases}


def cases_of(groups: Mapping[str, str], selected_groups: Iterable[str]) -> list[str]:
    selected = set(selected_groups)
    return sorted(c for c, g in groups.items() if g in selected)


def semi_supervised_splits(labeled_groups: Mapping[str, str], always_train: Sequence[str] = (),
                           num_folds: int = 5, seed: int = NNUNET_SPLIT_SEED) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json`` content: folds over the groups of labeled cases; ``always_train`` cases
    (unlabeled ones) are added to every training split and never validated."""
    if num_folds < 2:
        raise UserError(f"--folds must be at least 2 (cross-validation), got {num_folds}.")
    group_ids = sorted(set(labeled_groups.values()))
    if len(group_ids) < 2:
        raise UserError(f"Cross-validation needs at least 2 labeled groups, got {len(group_ids)}; "
                        f"label more cases or train with fold 'all'.")
    folds = generate_crossval_split(group_ids, seed=seed, n_splits=min(num_folds, len(group_ids)))
    return [{"train": cases_of(labeled_groups, fold["train"]) + sorted(always_train),
             "val": cases_of(labeled_groups, fold["val"])} for fold in folds]


def write_splits(dataset_name: str, splits: list[dict[str, list[str]]]) -> Path:
    path = Path(nnUNet_preprocessed.require()) / dataset_name / "splits_final.json"
    save_json_atomic(splits, path)
    return path


def _is_unlabeled_label_file(job: tuple[str, int, type]) -> bool:
    label_file, ignore, reader_writer_class = job
    seg, _ = reader_writer_class().read_seg(label_file)
    return bool(np.all(seg == ignore))


def unlabeled_cases_of_raw_dataset(dataset_name: str, num_processes: int = 2) -> set[str]:
    """Cases whose raw label file is entirely the ignore label."""
    dataset_json = read_dataset_json(dataset_name)
    if "ignore" not in dataset_json["labels"]:
        return set()
    cases = training_cases(dataset_name)
    example = next(iter(cases.values()))["images"][0]
    rw_class = type(reader_writer_for(dataset_json, example))
    jobs = [(c["label"], int(dataset_json["labels"]["ignore"]), rw_class) for c in cases.values()]
    with get_context("spawn").Pool(num_processes) as pool:
        flags = list(tqdm(pool.imap(_is_unlabeled_label_file, jobs, chunksize=8), total=len(jobs),
                          desc="Reading label files"))
    return {case for case, unlabeled in zip(cases, flags) if unlabeled}


def _run_splits(args: argparse.Namespace) -> int:
    name = resolve_dataset(args.dataset)
    cases = list(training_cases(name))
    unlabeled = unlabeled_cases_of_raw_dataset(name, args.num_processes)
    labeled = [c for c in cases if c not in unlabeled]
    groups = make_groups(labeled, args.group_regex, args.group_file)
    path = write_splits(name, semi_supervised_splits(groups, sorted(unlabeled), args.folds, args.seed))
    print(f"{len(labeled)} labeled cases in {len(set(groups.values()))} groups, {len(unlabeled)} unlabeled cases; "
          f"wrote {path}")
    return 0


def add_grouping_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-regex", help="cases whose ids give the same match (first capture group if any) "
                                              "form one group, e.g. 'patient\\d+' for ACDC")
    parser.add_argument("--group-file", help="JSON {case: group} or CSV 'case,group' mapping")
    parser.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default 5)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "splits", help="write splits_final.json with labeled-only validation folds for a semi-supervised dataset",
        description="Write nnU-Net's splits_final.json for a raw dataset in which unlabeled cases have label "
                    "files that are entirely the ignore label: folds over (groups of) labeled cases, unlabeled "
                    "cases in every training split.")
    parser.add_argument("dataset", help="dataset id or name")
    add_grouping_arguments(parser)
    parser.add_argument("--seed", type=int, default=NNUNET_SPLIT_SEED,
                        help=f"seed of the fold assignment (default {NNUNET_SPLIT_SEED}, nnU-Net's own)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="processes reading label files")
    parser.set_defaults(func=_run_splits)
