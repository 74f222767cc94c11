"""``nnunet-semi make-semi``: a semi-supervised dataset (and its twins) from a fully labeled raw dataset.

From a source dataset it writes, atomically and with the same validation folds:

* the **semi-supervised** dataset: labeled cases keep their labels, the other training cases (and any extra
  unlabeled images) get label files that are entirely the ignore label; held-out cases go to ``imagesTs`` /
  ``labelsTs`` as the test set;
* its **labeled-only twin**: the labeled cases alone, for the vanilla nnU-Net baseline;
* optionally its **fully labeled twin**: every training case with its real label, the upper bound.

Cases are selected by group (``--group-regex``/``--group-file``, e.g. one ACDC patient = two frames), seeded.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
from tqdm import tqdm

from nnunet_semi.errors import UserError
from nnunet_semi.planners.raw import (
    MANIFEST_FILE,
    RawDatasetWriter,
    commit_all,
    ensure_dataset_id_free,
    labels_with_ignore,
    read_case_list,
    read_dataset_json,
    reader_writer_for,
    resolve_dataset,
    training_cases,
)
from nnunet_semi.planners.splits import add_grouping_arguments, make_groups, semi_supervised_splits, write_splits
from nnunet_semi.cli_text import help_text


@dataclass
class SemiSelection:
    """Which groups are labeled, unlabeled and held out; ``groups`` maps every source case to its group."""

    groups: dict[str, str]
    labeled: list[str]
    unlabeled: list[str]
    holdout: list[str] = field(default_factory=list)

    def cases(self, selected_groups: Sequence[str]) -> list[str]:
        selected = set(selected_groups)
        return sorted(c for c, g in self.groups.items() if g in selected)


def _entries_to_groups(entries: Sequence[str], groups: dict[str, str], source: str) -> list[str]:
    """List entries are case ids or group ids; return their groups, in list order, without repeats."""
    group_ids = set(groups.values())
    resolved, unknown = [], []
    for entry in entries:
        group = groups.get(entry, entry if entry in group_ids else None)
        if group is None:
            unknown.append(entry)
        elif group not in resolved:
            resolved.append(group)
    if unknown:
        raise UserError(f"{len(unknown)} entries of {source} are neither case ids nor groups of the source "
                        f"dataset, e.g. {unknown[:5]}.")
    return resolved


def _number_to_take(available: int, fraction: float | None, count: int | None, what: str) -> int:
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise UserError(f"--fraction must be in (0, 1], got {fraction}.")
        return max(1, round(fraction * available))
    if count is not None:
        if not 1 <= count <= available:
            raise UserError(f"--count must be between 1 and the {available} {what}, got {count}.")
        return count
    return available


def select_cases(cases: Sequence[str], groups: dict[str, str], seed: int,
                 labeled_list: Sequence[str] | None = None, fraction: float | None = None,
                 count: int | None = None, holdout_list: Sequence[str] | None = None,
                 test_fraction: float | None = None) -> SemiSelection:
    """Pick held-out, labeled and unlabeled groups.

    Held out: the groups of ``holdout_list``, or a seeded ``test_fraction`` of all groups. Labeled: the first
    ``count`` (or ``fraction``) of the groups in ``labeled_list`` order, or, without a list, a seeded random
    ``count``/``fraction`` of the remaining groups. Everything else not held out is unlabeled.
    """
    rng = random.Random(seed)
    all_groups = sorted(set(groups.values()))
    if holdout_list is not None and test_fraction is not None:
        raise UserError("Give either --holdout-list or --test-fraction, not both.")
    if holdout_list is not None:
        holdout = _entries_to_groups(holdout_list, groups, "--holdout-list")
    elif test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise UserError(f"--test-fraction must be in (0, 1), got {test_fraction}.")
        holdout = sorted(rng.sample(all_groups, max(1, round(test_fraction * len(all_groups)))))
    else:
        holdout = []
    pool = [g for g in all_groups if g not in set(holdout)]
    if fraction is not None and count is not None:
        raise UserError("Give either --fraction or --count, not both.")
    if labeled_list is not None:
        candidates = _entries_to_groups(labeled_list, groups, "--labeled-list")
        held_out = [g for g in candidates if g in set(holdout)]
        if held_out:
            raise UserError(f"Groups {held_out[:5]} are both in --labeled-list and held out.")
    elif fraction is None and count is None:
        raise UserError("Say which cases keep their labels: --labeled-list, --fraction or --count.")
    else:
        candidates = rng.sample(pool, len(pool))
    labeled = sorted(candidates[:_number_to_take(len(candidates), fraction, count, "candidate groups")])
    unlabeled = [g for g in pool if g not in set(labeled)]
    return SemiSelection(groups=dict(groups), labeled=labeled, unlabeled=unlabeled, holdout=holdout)


def _check_image_names(folder: str, file_ending: str) -> None:
    """Every image file must follow nnU-Net's naming ``CASE_XXXX<ending>`` (XXXX: the channel, 0000 first)."""
    pattern = re.compile(r".+_\d{4}" + re.escape(file_ending))
    for name in sorted(os.listdir(folder)):
        if name.endswith(file_ending) and not pattern.fullmatch(name):
            raise UserError(f"--unlabeled-images {folder}: '{name}' does not follow nnU-Net's image naming "
                            f"CASE_0000{file_ending} (one file per channel: _0000, _0001, ...). Rename the files.")


def _check_like_source(images: list[str], expected: tuple[int, ...], reader_writer) -> None:
    """Same number of channels and spatial dimensions as the source dataset's images (shape (C, *spatial))."""
    shape = reader_writer.read_images(images)[0].shape
    if shape[0] != expected[0] or len(shape) != len(expected):
        raise UserError(f"{images[0]} has {shape[0]} channel(s) and shape {shape[1:]}, images of the dataset have "
                        f"{expected[0]} channel(s) and shape like {expected[1:]} (e.g. an RGB image in a grey "
                        f"dataset). Convert it first.")


def extra_unlabeled_images(folders: Sequence[str], file_ending: str, reference_images: list[str],
                           reader_writer=None) -> dict[str, list[str]]:
    """case -> image files for folders in nnU-Net's image naming (``CASE_0000<ending>``, ``CASE_0001...``), each
    checked against ``reference_images`` (one case of the dataset) with ``reader_writer`` when given."""
    files_per_case = len(reference_images)
    expected = reader_writer.read_images(reference_images)[0].shape if reader_writer and folders else None
    cases: dict[str, list[str]] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise UserError(f"--unlabeled-images {folder} is not a folder.")
        _check_image_names(folder, file_ending)
        image_lists = create_lists_from_splitted_dataset_folder(folder, file_ending, num_processes=1)
        if not image_lists:
            raise UserError(f"--unlabeled-images {folder} holds no images named CASE_0000{file_ending}.")
        for images in image_lists:
            case = os.path.basename(images[0])[: -len(file_ending) - 5]
            if len(images) != files_per_case:
                raise UserError(f"{folder}: case {case} has {len(images)} image files, cases of the dataset "
                                f"have {files_per_case}.")
            if case in cases:
                raise UserError(f"Extra unlabeled case id '{case}' occurs in more than one folder.")
            if reader_writer is not None:
                _check_like_source(images, expected, reader_writer)
            cases[case] = images
    return cases


def make_semi_supervised_datasets(source: str | int, dataset_id: int, selection_args: dict,
                                  name: str | None = None, twin_id: int | None = None,
                                  full_id: int | None = None, unlabeled_image_folders: Sequence[str] = (),
                                  group_regex: str | None = None, group_file: str | None = None,
                                  num_folds: int = 5) -> dict[str, str]:
    """Write the semi-supervised dataset, its labeled-only twin (and the fully labeled twin) plus their splits.

    ``selection_args`` are the keyword arguments of :func:`select_cases` other than cases and groups.
    Returns the role -> dataset name mapping. Nothing is written unless every check passes.
    """
    source_name = resolve_dataset(source)
    if not nnUNet_preprocessed.is_set():
        raise UserError("nnUNet_preprocessed is not set: it is needed for the splits (splits_final.json).")
    twin_id = dataset_id + 1 if twin_id is None else twin_id
    ids = [dataset_id, twin_id] + ([full_id] if full_id is not None else [])
    if len(set(ids)) != len(ids):
        raise UserError(f"Dataset ids must differ, got {ids}.")
    for i in ids:
        ensure_dataset_id_free(i)

    source_json = read_dataset_json(source_name)
    cases = training_cases(source_name)
    groups = make_groups(cases, group_regex, group_file)
    selection = select_cases(list(cases), groups, **selection_args)
    reference_images = next(iter(cases.values()))["images"]
    extra = extra_unlabeled_images(unlabeled_image_folders, source_json["file_ending"], reference_images,
                                   reader_writer_for(source_json, reference_images[0]))
    clashes = sorted(set(extra) & set(cases))
    if clashes:
        raise UserError(f"Extra unlabeled case ids clash with source cases: {clashes[:5]}.")
    labeled, unlabeled = selection.cases(selection.labeled), selection.cases(selection.unlabeled)
    if not unlabeled and not extra:
        raise UserError("No unlabeled cases are left: label fewer cases or add --unlabeled-images.")
    splits = _all_splits({c: groups[c] for c in labeled}, unlabeled + sorted(extra), unlabeled, num_folds)

    name = name or f"{source_name.split('_', 1)[1]}Semi{len(selection.labeled)}"
    semi_json = {**source_json, "labels": labels_with_ignore(source_json["labels"])}
    writers = {"semi": RawDatasetWriter(dataset_id, name, semi_json),
               "labeled_twin": RawDatasetWriter(twin_id, f"{name}Labeled", source_json)}
    if full_id is not None:
        writers["full_twin"] = RawDatasetWriter(full_id, f"{name}Full", source_json)
    names = {role: w.name for role, w in writers.items()}
    splits = {role: splits[role] for role in names}
    try:
        _write_cases(writers, cases, labeled, unlabeled, extra, selection.cases(selection.holdout))
        writers["semi"].manifest = {
            "role": "semi", "source": source_name, **{k: v for k, v in names.items() if k != "semi"},
            "labeled_groups": selection.labeled, "unlabeled_groups": selection.unlabeled,
            "holdout_groups": selection.holdout, "labeled_cases": labeled, "unlabeled_cases": unlabeled,
            "extra_unlabeled_cases": sorted(extra), "test_cases": writers["semi"].test,
            "group_regex": group_regex, "group_file": group_file,
            "selection": {k: selection_args.get(k) for k in ("seed", "fraction", "count", "test_fraction")},
            "command": " ".join(sys.argv)}
        for role in ("labeled_twin", "full_twin"):
            if role in writers:
                writers[role].manifest = {"role": role, "semi": names["semi"], "source": source_name}
        commit_all(writers.values())
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    for role, dataset_name in names.items():
        write_splits(dataset_name, splits[role])
    return names


def _write_cases(writers: dict[str, RawDatasetWriter], cases: dict, labeled: list[str], unlabeled: list[str],
                 extra: dict[str, list[str]], test: list[str]) -> None:
    jobs = [(c, "labeled") for c in labeled] + [(c, "unlabeled") for c in unlabeled] + \
           [(c, "extra") for c in sorted(extra)] + [(c, "test") for c in test]
    for case, kind in tqdm(jobs, desc="Writing datasets"):
        if kind == "labeled":
            for writer in writers.values():
                writer.add_labeled(case, cases[case]["images"], cases[case]["label"])
        elif kind == "unlabeled":
            writers["semi"].add_unlabeled(case, cases[case]["images"])
            if "full_twin" in writers:
                writers["full_twin"].add_labeled(case, cases[case]["images"], cases[case]["label"])
        elif kind == "extra":
            writers["semi"].add_unlabeled(case, extra[case])
        else:
            writers["semi"].add_test(case, cases[case]["images"], cases[case]["label"])


def _all_splits(labeled_groups: dict[str, str], semi_unlabeled: list[str], real_unlabeled: list[str],
                num_folds: int) -> dict[str, list[dict[str, list[str]]]]:
    """Same validation folds everywhere; unlabeled cases train in the semi dataset, with labels in the full one.
    Computed before anything is written, so a bad fold count or too few labeled groups write nothing."""
    always_train = {"semi": semi_unlabeled, "labeled_twin": [], "full_twin": real_unlabeled}
    return {role: semi_supervised_splits(labeled_groups, cases, num_folds) for role, cases in always_train.items()}


def _run(args: argparse.Namespace) -> int:
    selection_args = dict(
        seed=args.seed, fraction=args.fraction, count=args.count, test_fraction=args.test_fraction,
        labeled_list=read_case_list(args.labeled_list) if args.labeled_list else None,
        holdout_list=[e for f in args.holdout_list for e in read_case_list(f)] if args.holdout_list else None)
    names = make_semi_supervised_datasets(
        args.source, args.id, selection_args, name=args.name, twin_id=args.twin_id, full_id=args.full_id,
        unlabeled_image_folders=args.unlabeled_images, group_regex=args.group_regex, group_file=args.group_file,
        num_folds=args.folds)
    for role, dataset_name in names.items():
        print(f"{role:>13}: {dataset_name}")
    print(f"Details in nnUNet_raw/{names['semi']}/{MANIFEST_FILE}. Next: nnunet-semi plan {names['semi']}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-semi", help="make a semi-supervised dataset and its labeled-only twin from a labeled raw dataset",
        description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="fully labeled source dataset (id or name) in nnUNet_raw")
    parser.add_argument("-o", "--id", type=int, required=True, help="id of the new semi-supervised dataset")
    parser.add_argument("--name", help="dataset name (default: <source name>Semi<number of labeled groups>)")
    parser.add_argument("--twin-id", type=int, help="id of the labeled-only twin (default: --id + 1)")
    parser.add_argument("--full-id", type=int, help="also write the fully labeled twin under this id")
    which = parser.add_argument_group("which cases keep their labels (groups, see --group-regex)")
    which.add_argument("--labeled-list", help="file of case or group ids, one per line; with --count/--fraction "
                                              "only the first ones in file order")
    which.add_argument("--fraction", type=float, help="fraction of groups that keep labels, in (0, 1]")
    which.add_argument("--count", type=int, help="number of groups that keep labels")
    which.add_argument("--seed", type=int, default=0, help="seed of the random selections (default 0)")
    held = parser.add_argument_group("held-out test set (written to imagesTs/labelsTs, never trained on)")
    held.add_argument("--holdout-list", nargs="+", help="files of case or group ids to hold out")
    held.add_argument("--test-fraction", type=float, help="hold out this seeded fraction of groups")
    add_grouping_arguments(parser)
    parser.add_argument("--unlabeled-images", nargs="+", default=[], metavar="FOLDER",
                        help="extra unlabeled images in nnU-Net naming (CASE_0000<ending>), e.g. synthetic ones")
    parser.set_defaults(func=_run)
