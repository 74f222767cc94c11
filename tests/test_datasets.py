"""convert-2d, make-semi and splits: the semi-supervised dataset convention in nnU-Net's raw format."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from PIL import Image

from nnunet_semi.cli import main
from nnunet_semi.errors import UserError
from nnunet_semi.planners.convert_2d import convert_2d_dataset
from nnunet_semi.planners.make_semi import make_semi_supervised_datasets
from nnunet_semi.planners.raw import read_manifest, training_cases
from nnunet_semi.toy_data import write_toy_2d_folders, write_toy_3d_dataset


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


# ---------------------------------------------------------------- convert-2d
def test_convert_2d_label_values_and_resize(nnunet_folders, tmp_path):
    images, masks = write_toy_2d_folders(tmp_path / "toy", num_cases=4, size=40)
    name = convert_2d_dataset(str(images), str(masks), 11, "Toy", ["core", "rim"], size="32x48", threshold=None)
    folder = nnunet_folders["nnUNet_raw"] / name
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "core": 1, "rim": 2}
    assert dataset_json["channel_names"] == {"0": "grey"} and dataset_json["numTraining"] == 4
    image = np.asarray(Image.open(folder / "imagesTr" / "toy000_0000.png"))
    label = np.asarray(Image.open(folder / "labelsTr" / "toy000.png"))
    assert image.shape == (32, 48) and label.shape == (32, 48)
    assert set(np.unique(label)) == {0, 1, 2}  # nearest resizing keeps label values


def test_convert_2d_thresholds_rgb_jpeg_masks(nnunet_folders, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "img" / "a.jpg")
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 250
    mask[0, 0] = 100  # JPEG ringing below the threshold
    Image.fromarray(mask).save(tmp_path / "msk" / "a_mask.png")
    name = convert_2d_dataset(str(tmp_path / "img"), str(tmp_path / "msk"), 12, "Rgb", ["polyp"], mask_suffix="_mask")
    folder = nnunet_folders["nnUNet_raw"] / name
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert np.asarray(Image.open(folder / "imagesTr" / "a_0000.png")).shape == (20, 30, 3)
    label = np.asarray(Image.open(folder / "labelsTr" / "a.png"))
    assert label.sum() == 100 and label[0, 0] == 0


def test_convert_2d_bad_input_writes_nothing(nnunet_folders, tmp_path):
    images, masks = write_toy_2d_folders(tmp_path / "toy", num_cases=3, size=16)
    os.remove(masks / "toy001.png")
    with pytest.raises(UserError, match="do not pair up"):
        convert_2d_dataset(str(images), str(masks), 13, "Bad", threshold=None, label_names=["a", "b"])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "toy001.png")
    with pytest.raises(UserError, match="differ in size"):
        convert_2d_dataset(str(images), str(masks), 13, "Bad", threshold=None, label_names=["a", "b"])
    assert _listing(nnunet_folders["nnUNet_raw"]) == []
    assert main(["convert-2d", str(images), str(masks), "-o", "13", "-n", "Bad"]) == 2  # CLI: message, exit 2


def test_convert_2d_refuses_label_value_masks_under_the_threshold(nnunet_folders, tmp_path):
    """Regression: masks holding 0/1/2 were thresholded at > 127 into an all-background dataset, exit code 0."""
    images, masks = write_toy_2d_folders(tmp_path / "toy", num_cases=3, size=16)
    with pytest.raises(UserError, match=r"values found: \[0, 1, 2\].*--mask-values"):
        convert_2d_dataset(str(images), str(masks), 14, "Labels")
    assert _listing(nnunet_folders["nnUNet_raw"]) == []


def test_convert_2d_names_a_corrupt_file(nnunet_folders, tmp_path):
    images, masks = write_toy_2d_folders(tmp_path / "toy", num_cases=3, size=16)
    (images / "toy001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="Cannot read .*toy001.png"):
        convert_2d_dataset(str(images), str(masks), 15, "Corrupt", threshold=None, label_names=["a", "b"])
    assert _listing(nnunet_folders["nnUNet_raw"]) == []


# ---------------------------------------------------------------- make-semi
@pytest.fixture
def toy3d(nnunet_folders):
    return write_toy_3d_dataset(20, num_subjects=8, frames=2, shape=(4, 12, 12))


def test_make_semi_groups_labels_and_splits(nnunet_folders, toy3d, tmp_path):
    (tmp_path / "labeled.list").write_text("subj005_frame02\nsubj002\n# comment\nsubj007\n")
    (tmp_path / "test.list").write_text("subj000_frame01\n")
    names = make_semi_supervised_datasets(
        toy3d, 30, dict(seed=0, labeled_list=["subj005_frame02", "subj002", "subj007"], count=2,
                        holdout_list=["subj000_frame01"]),
        full_id=32, group_regex=r"subj\d+", num_folds=5)
    assert names == {"semi": "Dataset030_Toy3DSemi2", "labeled_twin": "Dataset031_Toy3DSemi2Labeled",
                     "full_twin": "Dataset032_Toy3DSemi2Full"}
    manifest = read_manifest(names["semi"])
    assert manifest["labeled_groups"] == ["subj002", "subj005"]  # first two of the list, whole patients
    assert manifest["labeled_cases"] == ["subj002_frame01", "subj002_frame02", "subj005_frame01", "subj005_frame02"]
    assert manifest["test_cases"] == ["subj000_frame01", "subj000_frame02"]  # the whole patient is held out
    semi_cases = training_cases(names["semi"])
    assert len(semi_cases) == 14 and len(training_cases(names["labeled_twin"])) == 4
    assert len(training_cases(names["full_twin"])) == 14

    raw = nnunet_folders["nnUNet_raw"]
    semi_json = json.loads((raw / names["semi"] / "dataset.json").read_text())
    assert semi_json["labels"]["ignore"] == 3
    import SimpleITK as sitk
    unlabeled = sitk.GetArrayFromImage(sitk.ReadImage(semi_cases["subj001_frame01"]["label"]))
    image = sitk.ReadImage(semi_cases["subj001_frame01"]["images"][0])
    assert np.all(unlabeled == 3) and unlabeled.shape == sitk.GetArrayFromImage(image).shape
    assert sitk.ReadImage(semi_cases["subj001_frame01"]["label"]).GetSpacing() == image.GetSpacing()
    verify_dataset_integrity(str(raw / names["semi"]), num_processes=1)  # nnU-Net accepts the convention

    splits = {role: json.loads((nnunet_folders["nnUNet_preprocessed"] / n / "splits_final.json").read_text())
              for role, n in names.items()}
    assert len(splits["semi"]) == 2  # only two labeled groups: two folds
    for fold in range(2):
        val = splits["semi"][fold]["val"]
        assert val == splits["labeled_twin"][fold]["val"] == splits["full_twin"][fold]["val"]
        assert len(val) == 2 and val[0][:7] == val[1][:7]  # both frames of one patient
        assert set(manifest["unlabeled_cases"]) <= set(splits["semi"][fold]["train"])
        assert set(manifest["unlabeled_cases"]) <= set(splits["full_twin"][fold]["train"])
        assert not set(manifest["unlabeled_cases"]) & set(splits["labeled_twin"][fold]["train"])


def test_make_semi_random_fraction_is_seeded(nnunet_folders, toy3d):
    args = dict(seed=3, fraction=0.25)
    first = make_semi_supervised_datasets(toy3d, 40, args, group_regex=r"subj\d+")
    second = make_semi_supervised_datasets(toy3d, 50, args, group_regex=r"subj\d+")
    assert read_manifest(first["semi"])["labeled_groups"] == read_manifest(second["semi"])["labeled_groups"]
    assert len(read_manifest(first["semi"])["labeled_groups"]) == 2


@pytest.mark.parametrize("selection, message", [
    (dict(fraction=0.0), "--fraction must be in"),
    (dict(fraction=1.5), "--fraction must be in"),
    (dict(fraction=1.0), "No unlabeled cases are left"),
    (dict(labeled_list=["subj001", "nosuchcase"]), "neither case ids nor groups"),
    (dict(count=0), "--count must be between"),
    ({}, "Say which cases keep their labels"),
    (dict(count=1), "at least 2 labeled groups"),  # regression: the datasets were committed before this check
])
def test_make_semi_rejects_bad_selections_and_writes_nothing(nnunet_folders, toy3d, selection, message):
    before = _listing(nnunet_folders["nnUNet_raw"]), _listing(nnunet_folders["nnUNet_preprocessed"])
    with pytest.raises(UserError, match=message):
        make_semi_supervised_datasets(toy3d, 60, dict(seed=0, **selection), group_regex=r"subj\d+")
    assert (_listing(nnunet_folders["nnUNet_raw"]), _listing(nnunet_folders["nnUNet_preprocessed"])) == before


@pytest.mark.parametrize("options, message", [
    (dict(num_folds=1), "--folds must be at least 2"),
    (dict(num_folds=0), "--folds must be at least 2"),
    (dict(num_folds=-2), "--folds must be at least 2"),
    (dict(group_regex="("), "not a valid regular expression"),
    (dict(group_regex="x*"), "matches an empty string"),
])
def test_make_semi_bad_folds_and_groups_write_nothing(nnunet_folders, toy3d, options, message):
    """Regression: --folds 1 gave a scikit-learn traceback after the datasets were committed; '(' a traceback;
    'x*' put every case into one group and blamed the selection."""
    before = _listing(nnunet_folders["nnUNet_raw"]), _listing(nnunet_folders["nnUNet_preprocessed"])
    with pytest.raises(UserError, match=message):
        make_semi_supervised_datasets(toy3d, 60, dict(seed=0, count=4), **{"group_regex": r"subj\d+", **options})
    assert (_listing(nnunet_folders["nnUNet_raw"]), _listing(nnunet_folders["nnUNet_preprocessed"])) == before


def test_make_semi_checks_extra_images_against_the_dataset(nnunet_folders, tmp_path):
    images, masks = write_toy_2d_folders(tmp_path / "toy", num_cases=8, size=16)
    source = convert_2d_dataset(str(images), str(masks), 16, "Grey", ["core", "rim"], threshold=None)
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(extra / "synth_000.png")  # no _0000 channel suffix
    before = _listing(nnunet_folders["nnUNet_raw"])
    with pytest.raises(UserError, match="'synth_000.png' does not follow nnU-Net's image naming CASE_0000.png"):
        make_semi_supervised_datasets(source, 60, dict(seed=0, count=4), unlabeled_image_folders=[str(extra)])
    (extra / "synth_000.png").unlink()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(extra / "synth_000_0000.png")  # RGB into grey
    with pytest.raises(UserError, match="synth_000_0000.png has 3 channel.*dataset have 1 channel"):
        make_semi_supervised_datasets(source, 60, dict(seed=0, count=4), unlabeled_image_folders=[str(extra)])
    assert _listing(nnunet_folders["nnUNet_raw"]) == before


def test_make_semi_rejects_missing_source_and_used_ids(nnunet_folders, toy3d):
    with pytest.raises(UserError, match="does not exist in nnUNet_raw"):
        make_semi_supervised_datasets(99, 60, dict(seed=0, count=1))
    with pytest.raises(UserError, match="already used"):
        make_semi_supervised_datasets(toy3d, 20, dict(seed=0, count=1))
    with pytest.raises(UserError, match="already used"):
        make_semi_supervised_datasets(toy3d, 60, dict(seed=0, count=1), twin_id=20)
    assert _listing(nnunet_folders["nnUNet_preprocessed"]) == []


def test_make_semi_adds_extra_unlabeled_images(nnunet_folders, toy3d, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    source_image = training_cases(toy3d)["subj001_frame01"]["images"][0]
    for i in range(3):
        (extra / f"synth_{i:03d}_0000.nii.gz").write_bytes(open(source_image, "rb").read())
    names = make_semi_supervised_datasets(toy3d, 70, dict(seed=0, count=7), group_regex=r"subj\d+",
                                          unlabeled_image_folders=[str(extra)])
    manifest = read_manifest(names["semi"])
    assert len(manifest["unlabeled_cases"]) == 2  # 8 subjects, 7 labeled, one unlabeled (two frames)
    assert manifest["extra_unlabeled_cases"] == ["synth_000", "synth_001", "synth_002"]
    splits = json.loads((nnunet_folders["nnUNet_preprocessed"] / names["semi"] / "splits_final.json").read_text())
    assert all({"synth_000", "synth_001", "synth_002"} <= set(f["train"]) for f in splits)


# ---------------------------------------------------------------- splits of a hand-made semi-supervised dataset
def test_splits_command_reads_unlabeled_cases_from_label_files(nnunet_folders, toy3d):
    names = make_semi_supervised_datasets(toy3d, 80, dict(seed=0, count=4), group_regex=r"subj\d+")
    splits_file = nnunet_folders["nnUNet_preprocessed"] / names["semi"] / "splits_final.json"
    written_by_make_semi = json.loads(splits_file.read_text())
    splits_file.unlink()
    assert main(["splits", names["semi"], "--group-regex", r"subj\d+", "-np", "1"]) == 0
    assert json.loads(splits_file.read_text()) == written_by_make_semi
    unlabeled = set(read_manifest(names["semi"])["unlabeled_cases"])
    assert all(unlabeled <= set(fold["train"]) and not unlabeled & set(fold["val"]) for fold in written_by_make_semi)


def test_plan_needs_the_twin_of_a_hand_made_dataset(nnunet_folders, toy3d):
    assert main(["plan", toy3d, "-c", "2d"]) == 2  # not made by make-semi and no --twin: message, exit 2


def test_plan_refuses_configurations_nnunet_did_not_plan(nnunet_folders, tmp_path, capsys):
    """Regression: 'plan -c 3d_fullres' on 2D data printed 'Skipping', exited 0 and suggested a failing command."""
    images, masks = write_toy_2d_folders(tmp_path / "toy", num_cases=8, size=16)
    source = convert_2d_dataset(str(images), str(masks), 17, "Flat", ["core", "rim"], threshold=None)
    names = make_semi_supervised_datasets(source, 60, dict(seed=0, count=4))
    assert main(["plan", names["semi"], "-c", "3d_fullres", "-np", "1", "-npfp", "1"]) == 2
    assert "None of the configurations ['3d_fullres'] is in nnU-Net's plans" in capsys.readouterr().err


def test_stale_staging_folders_are_removed_young_ones_reported(nnunet_folders, tmp_path, capsys):
    from nnunet_semi.planners.raw import RawDatasetWriter
    raw = nnunet_folders["nnUNet_raw"]
    stale, young = raw / ".Dataset990_Old.staging-0123abcd", raw / ".Dataset991_New.staging-89abcdef"
    for folder in (stale, young):
        (folder / "imagesTr").mkdir(parents=True)
    os.utime(stale, (0, 0))  # left by a run killed long ago
    writer = RawDatasetWriter(992, "Fresh", {"file_ending": ".png", "labels": {}, "channel_names": {}})
    out = capsys.readouterr().out
    assert f"Removed {stale}" in out and f"{young} looks like a staging folder of another run" in out
    twin = RawDatasetWriter(993, "FreshTwin", {"file_ending": ".png", "labels": {}, "channel_names": {}})
    assert writer.folder.exists() and str(writer.folder) not in capsys.readouterr().out  # this run's own folder
    writer.discard(), twin.discard()
    assert not stale.exists() and young.exists()


def test_leftover_temporary_files_of_a_killed_run_are_removed(tmp_path):
    from nnunet_semi.files import remove_stale, temporary_files, write_atomic
    write_atomic(tmp_path / "checkpoint_latest.pth", lambda tmp: open(tmp, "w").write("x"))
    leftover = tmp_path / ".checkpoint_latest.pth.k2j3.tmp"
    leftover.write_text("half a checkpoint")
    assert temporary_files(tmp_path) == [leftover]
    assert remove_stale(temporary_files(tmp_path), 0, "a temporary checkpoint") == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]
