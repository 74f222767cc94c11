"""Classes from masks and files, training images from raw datasets, and synthetic cases written into datasets."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from PIL import Image

from nnunet_semi.errors import UserError
from nnunet_semi.planners import raw
from nnunet_semi.synthesis import writer as writer_module
from nnunet_semi.synthesis.classes import assign_classes
from nnunet_semi.synthesis.data import (
    ImageRef,
    build_spec,
    dataset_reader,
    default_resolution,
    fit_square,
    load_images,
    slice_axis_for,
    to_real_size,
)
from nnunet_semi.synthesis.generators import KIND_OURS, ClassGenerator
from nnunet_semi.synthesis.networks import Generator, GeneratorConfig
from nnunet_semi.synthesis.synthesize import (
    balanced_counts,
    counts_per_class,
    proportional_counts,
    synthesize,
    synthetic_counts,
)
from nnunet_semi.synthesis.writer import MANIFEST_NAME, InPlaceTarget, NewDatasetTarget

PNG_NAME = "Dataset011_Polyps"
NII_NAME = "Dataset012_Heart"


def make_png_dataset(raw_root: Path, size: tuple[int, int] = (20, 16)) -> Path:
    """8 RGB cases like Kvasir: 0-3 contain a polyp, 4-5 do not, 6-7 are unlabeled (entirely ignore = 2)."""
    folder = raw_root / PNG_NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / "imagesTr" / f"case{i}_0000.png")
        mask = np.zeros(size, dtype=np.uint8)
        if i < 4:
            mask[2:6, 3:8] = 1
        if i >= 6:
            mask[:] = 2
        Image.fromarray(mask).save(folder / "labelsTr" / f"case{i}.png")
    dataset_json = {"channel_names": {"0": "R", "1": "G", "2": "B"},
                    "labels": {"background": 0, "polyp": 1, "ignore": 2}, "numTraining": 8, "file_ending": ".png"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


def make_nifti_dataset(raw_root: Path, spacing_zyx=(8.0, 1.5, 1.25), name: str = NII_NAME) -> Path:
    """3 volumes of 4 slices (z, y, x) = (4, 12, 10): slice 0 empty, 1 RV, 2 RV+LV, 3 LV; no ignore label."""
    folder = raw_root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        image = rng.normal(100, 20, (4, 12, 10)).astype(np.float32)
        seg = np.zeros((4, 12, 10), dtype=np.uint8)
        seg[1, 2:5, 2:5] = 1
        seg[2, 2:5, 2:5] = 1
        seg[2, 7:10, 6:9] = 2
        seg[3, 7:10, 6:9] = 2
        for array, path in ((image, folder / "imagesTr" / f"heart{i}_0000.nii.gz"),
                            (seg, folder / "labelsTr" / f"heart{i}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(tuple(reversed(spacing_zyx)))
            sitk.WriteImage(itk, str(path))
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "RV": 1, "LV": 2},
                    "numTraining": 3, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


def tiny_generator(spec, class_name: str) -> ClassGenerator:
    torch.manual_seed(0)
    network = Generator(GeneratorConfig(resolution=spec.resolution, img_channels=spec.channels, z_dim=8, w_dim=8,
                                        channel_base=64, channel_max=8)).eval()
    return ClassGenerator(class_name, Path("/models") / f"{class_name}.pt", KIND_OURS, network, 8, spec)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- classes ---------------------------------------------------------------------------------------------------
def test_mask_classes_skip_unlabeled_and_all_classes(nnunet_folders):
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    classes = assign_classes(PNG_NAME, "mask")
    assert {c: [r.case for r in refs] for c, refs in classes.items()} == {
        "no_foreground": ["case4", "case5"], "polyp": ["case0", "case1", "case2", "case3"]}
    assert [c for c in assign_classes(PNG_NAME, "mask:polyp")] == ["no_polyp", "polyp"]
    assert len(assign_classes(PNG_NAME, "all")["all"]) == 8
    assert len(assign_classes(PNG_NAME, "all", labeled_only=True)["all"]) == 6
    with pytest.raises(UserError, match="not a foreground label"):
        assign_classes(PNG_NAME, "mask:tumour")


def test_mask_classes_of_3d_cases_are_per_slice(nnunet_folders):
    make_nifti_dataset(nnunet_folders["nnUNet_raw"])
    classes = assign_classes(NII_NAME, "mask")
    assert {c: len(refs) for c, refs in classes.items()} == {"LV": 3, "RV": 3, "RV+LV": 3, "no_foreground": 3}
    assert {r.slice_index for r in classes["RV+LV"]} == {2}
    lv = assign_classes(NII_NAME, "mask:LV")
    assert sorted({r.slice_index for r in lv["LV"]}) == [2, 3]
    assert sorted({r.slice_index for r in lv["no_LV"]}) == [0, 1]


def test_class_files(nnunet_folders, tmp_path):
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    csv_file = tmp_path / "classes.csv"
    csv_file.write_text("case_id,class\ncase0,benign\ncase1,malignant\ncase6,benign\n")
    classes = assign_classes(PNG_NAME, str(csv_file))
    assert {c: [r.case for r in refs] for c, refs in classes.items()} == {"benign": ["case0", "case6"],
                                                                          "malignant": ["case1"]}
    json_file = tmp_path / "classes.json"
    json_file.write_text(json.dumps({"case2": "a", "case3": "b"}))
    assert list(assign_classes(PNG_NAME, str(json_file))) == ["a", "b"]
    json_file.write_text(json.dumps({"case99": "a"}))
    with pytest.raises(UserError, match="case99"):
        assign_classes(PNG_NAME, str(json_file))
    with pytest.raises(UserError, match="existing .csv/.json"):
        assign_classes(PNG_NAME, str(tmp_path / "missing.csv"))


def test_slice_axis_follows_nnunet_2d(nnunet_folders):
    make_nifti_dataset(nnunet_folders["nnUNet_raw"])
    make_nifti_dataset(nnunet_folders["nnUNet_raw"], spacing_zyx=(1.0, 1.0, 6.0), name="Dataset013_Sideways")
    rw, cases = dataset_reader(NII_NAME)
    assert slice_axis_for(NII_NAME, rw, cases) == 0
    _, sideways = dataset_reader("Dataset013_Sideways")
    assert slice_axis_for("Dataset013_Sideways", rw, sideways) == 2
    plans = nnunet_folders["nnUNet_preprocessed"] / "Dataset013_Sideways" / "nnUNetPlans.json"
    plans.parent.mkdir()
    plans.write_text(json.dumps({"transpose_forward": [1, 0, 2]}))
    assert slice_axis_for("Dataset013_Sideways", rw, sideways) == 1


def test_training_images_are_square_8_bit(nnunet_folders):
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    refs = assign_classes(PNG_NAME, "all")["all"]
    assert default_resolution(PNG_NAME, refs) == 64  # clipped to the smallest supported size
    spec = build_spec(PNG_NAME, "all", refs, 16, "pad")
    assert spec.rgb and spec.natural_image and spec.intensity_ranges == [[0.0, 255.0]] * 3
    images = load_images(spec, progress=False)
    assert images.shape == (8, 3, 16, 16) and images.dtype == np.uint8
    # 'pad': the 20 x 16 image is padded to 20 x 20 with black columns before resizing
    assert images[:, :, :, 0].max() == 0 and images[:, :, 8, 8].max() > 0
    with pytest.raises(UserError, match="power of two"):
        build_spec(PNG_NAME, "all", refs, 48, "resize")


def test_3d_intensities_and_spacing(nnunet_folders):
    make_nifti_dataset(nnunet_folders["nnUNet_raw"])
    refs = assign_classes(NII_NAME, "all")["all"]
    spec = build_spec(NII_NAME, "all", refs, 16, "resize")
    lo, hi = spec.intensity_ranges[0]
    assert 30 < lo < 60 and 140 < hi < 170  # 0.5 / 99.5 percentiles of N(100, 20)
    # slices along z keep the z spacing; 12 x 10 pixels of 1.5 x 1.25 mm become 16 x 16 pixels
    assert spec.spacing == pytest.approx([8.0, 12 * 1.5 / 16, 10 * 1.25 / 16])
    assert load_images(spec, progress=False).shape == (12, 1, 16, 16)


# --- counts ----------------------------------------------------------------------------------------------------
def test_class_counts():
    real = {"benign": 300, "malignant": 100}
    assert proportional_counts(real, 10) == {"benign": 8, "malignant": 2}  # 7.5 / 2.5: ties to class order
    assert balanced_counts(real, 150) == {"benign": 0, "malignant": 150}
    assert balanced_counts(real, 300) == {"benign": 50, "malignant": 250}
    assert counts_per_class(real, None, "50%", "keep") == {"benign": 150, "malignant": 50}
    assert counts_per_class(real, 7, None, "keep") == {"benign": 7, "malignant": 7}
    with pytest.raises(UserError, match="exactly one"):
        counts_per_class(real, 7, "10", "keep")
    with pytest.raises(UserError, match="--total"):
        counts_per_class(real, None, "lots", "keep")


def test_ssgnet_strategies_count_synthetic_images_already_there():
    real, existing = {"benign": 300, "malignant": 100}, {"malignant": 50}
    def strategy(name):
        return counts_per_class(real, None, None, "keep", name, existing)
    assert strategy("balance") == {"benign": 0, "malignant": 150}        # up to M = 300
    assert strategy("balance+20%") == {"benign": 60, "malignant": 210}   # up to 360
    assert strategy("balance+50%") == {"benign": 150, "malignant": 300}  # up to 450
    assert counts_per_class(real, None, None, "keep", "balance", {"malignant": 250}) == {"benign": 0, "malignant": 0}
    assert counts_per_class(real, None, "100", "balance", None, existing) == {"benign": 0, "malignant": 100}
    with pytest.raises(UserError, match="exactly one"):
        counts_per_class(real, 5, None, "keep", "balance")
    with pytest.raises(UserError, match="--strategy"):
        strategy("balanced+20")
    manifest = {"images": {"synth_a_000000": {"class": "a"}, "synth_a_000001": {"class": "a"},
                           "synth_b_000000": {"class": "b"}}}
    assert synthetic_counts(manifest) == {"a": 2, "b": 1}


# --- writing ---------------------------------------------------------------------------------------------------
def test_generated_images_go_back_to_the_real_size_undoing_the_fit():
    image = torch.arange(24.0).reshape(1, 1, 6, 4)
    padded = fit_square(image, 6, "pad", torch.tensor([-1.0]))  # pad the 4 columns to 6, no resize
    assert padded.shape == (1, 1, 6, 6) and float(padded[0, 0, 0, 0]) == -1.0
    torch.testing.assert_close(to_real_size(padded, [6, 4], "pad"), image)  # the centre crop undoes the padding
    resized = to_real_size(torch.ones(1, 3, 16, 16), [20, 12], "resize")
    assert resized.shape == (1, 3, 20, 12) and torch.allclose(resized, torch.ones(1))


def test_png_cases_added_in_place_pass_nnunet_verification(nnunet_folders):
    folder = make_png_dataset(nnunet_folders["nnUNet_raw"])
    classes = assign_classes(PNG_NAME, "mask")
    generators = [tiny_generator(build_spec(PNG_NAME, c, refs, 16, "resize"), c) for c, refs in classes.items()]
    result = synthesize(InPlaceTarget(PNG_NAME), generators, {"no_foreground": 2, "polyp": 3}, None, "cpu", 2, 0, "t")
    assert result.cases == [f"synth_no_foreground_{i:06d}" for i in range(2)] + \
        [f"synth_polyp_{i:06d}" for i in range(3)]
    verify_dataset_integrity(str(folder), num_processes=1)
    image = np.asarray(Image.open(folder / "imagesTr" / "synth_polyp_000002_0000.png"))
    assert image.shape == (20, 16, 3) and image.dtype == np.uint8  # the real images' size, not the GAN's 16 x 16
    assert np.unique(np.asarray(Image.open(folder / "labelsTr" / "synth_polyp_000002.png"))).tolist() == [2]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 13
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["images"]["synth_polyp_000000"] == {"class": "polyp", "seed": 2,
                                                        "generator": "/models/polyp.pt", "run": 0}
    assert manifest["runs"][0]["classes"]["polyp"]["data_spec"]["real_images"][0] == ["case0", 0]
    # the recorded seed reproduces the written image
    _, regenerated = next(generators[1].generate([2]))
    regenerated = to_real_size(torch.from_numpy(regenerated), [20, 16], "resize").numpy()
    expected = ((np.clip(regenerated[0], -1, 1) + 1) * 127.5).transpose(1, 2, 0)
    written = np.asarray(Image.open(folder / "imagesTr" / "synth_polyp_000000_0000.png")).astype(float)
    np.testing.assert_allclose(written, expected, atol=0.51)
    # a second run continues the numbering and the seeds, and does not repeat images; empty classes are skipped
    again = synthesize(InPlaceTarget(PNG_NAME), generators, {"no_foreground": 0, "polyp": 1}, None, "cpu", 2, 1, "t")
    assert again.cases == ["synth_polyp_000003"] and list(again.samples) == ["polyp"]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["images"]["synth_polyp_000003"]["seed"] == 5 and len(manifest["runs"]) == 2
    assert list(manifest["runs"][1]["classes"]) == ["polyp"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_nifti_cases_in_a_new_dataset_pass_nnunet_verification(nnunet_folders):
    source = make_nifti_dataset(nnunet_folders["nnUNet_raw"])
    before = snapshot(source)
    spec = build_spec(NII_NAME, "all", assign_classes(NII_NAME, "all")["all"], 16, "resize")
    target = NewDatasetTarget(NII_NAME, 21, "HeartSynth")
    synthesize(target, [tiny_generator(spec, "all")], {"all": 2}, 0, "cpu", 2, 0, "t")
    folder = nnunet_folders["nnUNet_raw"] / "Dataset021_HeartSynth"
    verify_dataset_integrity(str(folder), num_processes=1)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 5 and dataset_json["labels"]["ignore"] == 3
    image = sitk.ReadImage(str(folder / "imagesTr" / "synth_all_000001_0000.nii.gz"))
    assert image.GetSize() == (16, 16, 1)
    assert image.GetSpacing() == pytest.approx((10 * 1.25 / 16, 12 * 1.5 / 16, 8.0))
    values = sitk.GetArrayFromImage(image)
    lo, hi = spec.intensity_ranges[0]
    assert values.min() >= lo - 1e-3 and values.max() <= hi + 1e-3
    assert snapshot(source) == before  # the source dataset is untouched


def test_failures_leave_datasets_unchanged(nnunet_folders, monkeypatch):
    folder = make_png_dataset(nnunet_folders["nnUNet_raw"])
    spec = build_spec(PNG_NAME, "all", assign_classes(PNG_NAME, "all")["all"], 16, "resize")
    generators = [tiny_generator(spec, "all")]
    before = snapshot(folder)
    original_write = writer_module.CaseFileWriter.write
    calls = []

    def failing_write(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return original_write(self, *args)

    monkeypatch.setattr(writer_module.CaseFileWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        synthesize(InPlaceTarget(PNG_NAME), generators, {"all": 4}, 0, "cpu", 2, 0, "t")
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        synthesize(NewDatasetTarget(PNG_NAME, 31, "New"), generators, {"all": 4}, 0, "cpu", 2, 0, "t")
    monkeypatch.setattr(writer_module.CaseFileWriter, "write", original_write)
    assert snapshot(folder) == before
    assert sorted(p.name for p in nnunet_folders["nnUNet_raw"].iterdir()) == [PNG_NAME]

    # failure while committing: after the files were moved in and the manifest was written
    original_save = raw.save_json_atomic

    def failing_save(obj, path):
        if Path(path).name == "dataset.json":
            raise OSError("read-only")
        return original_save(obj, path)

    monkeypatch.setattr(raw, "save_json_atomic", failing_save)
    with pytest.raises(OSError, match="read-only"):
        synthesize(InPlaceTarget(PNG_NAME), generators, {"all": 2}, 0, "cpu", 2, 0, "t")
    assert snapshot(folder) == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_new_dataset_refuses_a_used_id(nnunet_folders):
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    with pytest.raises(UserError, match="already used"):
        NewDatasetTarget(PNG_NAME, 11, "Again")
    assert len(os.listdir(nnunet_folders["nnUNet_raw"])) == 1


def test_writer_refuses_generator_with_wrong_channels(nnunet_folders):
    make_png_dataset(nnunet_folders["nnUNet_raw"])
    make_nifti_dataset(nnunet_folders["nnUNet_raw"])
    grey = build_spec(NII_NAME, "all", [ImageRef("heart0", 0)], 16, "resize")
    target = InPlaceTarget(PNG_NAME)
    with pytest.raises(UserError, match="1-channel"):
        synthesize(target, [tiny_generator(grey, "all")], {"all": 1}, 0, "cpu", 1, 0, "t")
    assert not target.staging.exists()
