"""Evaluation of files and folders (NIfTI with anisotropic spacing, PNG, ignore label) and `nnunet-semi evaluate`."""
import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from PIL import Image

from nnunet_semi.cli import main
from nnunet_semi.errors import UserError
from nnunet_semi.evaluation.aggregate import fold_means
from nnunet_semi.evaluation import folders
from nnunet_semi.evaluation.folders import evaluate_folder, label_classes, seconds_per_iteration

SPACING_XYZ = (1.0, 2.0, 5.0)  # as SimpleITK writes it; nnU-Net's arrays are (z, y, x) with spacing (5, 2, 1)
ACDC_LIKE = {"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz", "numTraining": 0,
             "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 4}}
SHAPE = (4, 6, 6)


def write_nifti(path, labels: dict, shape=SHAPE, spacing_xyz=SPACING_XYZ):
    """A segmentation with ``labels = {(z, y, x): value}`` on a zero background."""
    array = np.zeros(shape, dtype=np.uint8)
    for point, value in labels.items():
        array[point] = value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


@pytest.fixture()
def acdc_like_folders(tmp_path):
    """case1: RV off by one slice (5 mm), MYO half overlapping along x, LV absent from both.
    case2: like case1's MYO but the reference's third voxel is the ignore label; LV perfect.
    case3: unlabeled (reference all ignore)."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    write_nifti(ref / "case1.nii.gz", {(1, 1, 1): 1, (1, 3, 1): 2, (1, 3, 2): 2})
    write_nifti(pred / "case1.nii.gz", {(2, 1, 1): 1, (1, 3, 2): 2, (1, 3, 3): 2})
    write_nifti(ref / "case2.nii.gz", {(1, 3, 1): 2, (1, 3, 2): 2, (1, 3, 3): 4, (3, 5, 5): 3})
    write_nifti(pred / "case2.nii.gz", {(1, 3, 2): 2, (1, 3, 3): 2, (3, 5, 5): 3})
    write_nifti(pred / "case3.nii.gz", {(0, 0, 0): 1})
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "case1.nii.gz")))
    unlabeled = sitk.GetImageFromArray(np.full_like(array, 4))
    unlabeled.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(unlabeled, str(ref / "case3.nii.gz"))
    return ref, pred


def test_classes_are_named_as_in_dataset_json_for_labels_and_regions():
    assert label_classes(ACDC_LIKE) == {"RV": 1, "MYO": 2, "LV": 3}  # the ignore label is no class
    regions = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]},
               "regions_class_order": [1, 2, 3]}
    assert label_classes(regions) == {"whole": (1, 2, 3), "core": (2, 3), "enhancing": 3}


def test_multi_class_metrics_with_anisotropic_spacing_and_ignore_label(acdc_like_folders):
    ref, pred = acdc_like_folders
    results = evaluate_folder(ref, pred, ACDC_LIKE)
    assert set(results) == {"case1", "case2"}  # the unlabeled case is skipped
    case1, case2 = results["case1"], results["case2"]
    # RV: one voxel each, one slice apart (5 mm along z)
    assert case1["RV"] == pytest.approx({"Dice": 0.0, "IoU": 0.0, "HD95": 5.0, "ASD": 5.0, "ASSD": 5.0, "NSD": 0.0})
    # MYO: tp 1, fp 1, fn 1; distances along x (1 mm): pred->ref {0, 1}, ref->pred {1, 0}
    assert case1["MYO"] == pytest.approx({"Dice": 0.5, "IoU": 1 / 3, "HD95": 0.95, "ASD": 0.5, "ASSD": 0.5,
                                          "NSD": 1.0})
    assert all(math.isnan(v) for v in case1["LV"].values())
    # MYO with the reference's (1, 3, 3) ignored: tp 1, fn 1, the prediction there does not count
    assert case2["MYO"] == pytest.approx({"Dice": 2 / 3, "IoU": 0.5, "HD95": 0.95, "ASD": 0.0, "ASSD": 1 / 3,
                                          "NSD": 1.0})
    assert case2["LV"] == pytest.approx({"Dice": 1.0, "IoU": 1.0, "HD95": 0.0, "ASD": 0.0, "ASSD": 0.0, "NSD": 1.0})


def test_fold_mean_dice_is_what_nnunet_prints(acdc_like_folders, tmp_path):
    ref, pred = acdc_like_folders
    (pred / "case3.nii.gz").unlink()  # nnU-Net would give the unlabeled case NaN everywhere; compare the rest
    ours = fold_means(evaluate_folder(ref, pred, ACDC_LIKE))
    theirs = compute_metrics_on_folder(str(ref), str(pred), None, SimpleITKIO(), ".nii.gz", [1, 2, 3], 4,
                                       num_processes=1)
    assert ours["mean"]["Dice"] == pytest.approx(theirs["foreground_mean"]["Dice"])
    assert ours["MYO"]["IoU"] == pytest.approx(theirs["mean"][2]["IoU"])


def test_ssl4mis_mode_on_files(acdc_like_folders):
    ref, pred = acdc_like_folders
    case1 = evaluate_folder(ref, pred, ACDC_LIKE, mode="ssl4mis")["case1"]
    assert case1["RV"] == pytest.approx({"Dice": 0.0, "IoU": 0.0, "HD95": 1.0, "ASD": 1.0})  # voxels, not mm
    assert case1["LV"] == {"Dice": 0.0, "IoU": 0.0, "HD95": 0.0, "ASD": 0.0}  # a missing class scores 0


def test_cheap_cases_are_evaluated_in_process_and_costly_ones_in_a_pool(monkeypatch):
    """The pool of spawned workers is started only when the timed first case says it saves more than its
    start-up; either way every result comes back, in order."""
    started = []
    spawn = folders.multiprocessing.get_context("spawn")
    monkeypatch.setattr(folders.multiprocessing, "get_context", lambda method: started.append(method) or spawn)
    assert list(folders._map(abs, [-1, 2, -3, 4], num_processes=2)) == [1, 2, 3, 4] and not started
    assert list(folders._map(abs, [-1], num_processes=2)) == [1] and list(folders._map(abs, [], 2)) == []
    monkeypatch.setattr(folders, "WORKER_STARTUP_S", -1.0)  # any work pays for the workers now
    assert list(folders._map(abs, [-1, 2, -3, 4], num_processes=1)) == [1, 2, 3, 4] and not started
    assert list(folders._map(abs, [-1, 2, -3, 4], num_processes=2)) == [1, 2, 3, 4] and started == ["spawn"]


def test_png_images_are_measured_in_2d(tmp_path):
    dataset_json = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "file_ending": ".png", "numTraining": 0,
                    "labels": {"background": 0, "polyp": 1}}
    square, centre = np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8)
    square[1:4, 1:4], centre[2, 2] = 1, 1
    (tmp_path / "ref").mkdir(), (tmp_path / "pred").mkdir()
    Image.fromarray(square).save(tmp_path / "ref" / "img.png")
    Image.fromarray(centre).save(tmp_path / "pred" / "img.png")
    polyp = evaluate_folder(tmp_path / "ref", tmp_path / "pred", dataset_json)["img"]["polyp"]
    assert polyp == pytest.approx({"Dice": 0.2, "IoU": 1 / 9, "HD95": math.sqrt(2), "ASD": 1.0,
                                   "ASSD": (5 + 4 * math.sqrt(2)) / 9, "NSD": 1.0})


def test_folder_errors_name_the_problem(acdc_like_folders):
    ref, pred = acdc_like_folders
    with pytest.raises(UserError, match="missing case4"):
        evaluate_folder(ref, pred, ACDC_LIKE, expected_cases=["case1", "case2", "case3", "case4"])
    write_nifti(pred / "case5.nii.gz", {})
    with pytest.raises(UserError, match="case5 .*no reference|no reference.*case5"):
        evaluate_folder(ref, pred, ACDC_LIKE)
    (pred / "case5.nii.gz").unlink()
    write_nifti(pred / "case1.nii.gz", {}, shape=(4, 6, 7))
    with pytest.raises(UserError, match="shape"):
        evaluate_folder(ref, pred, ACDC_LIKE)


def test_label_values_outside_dataset_json_stop_the_evaluation(acdc_like_folders):
    """Regression: a value 7 in a prediction (or reference) was ignored silently and Dice stayed unchanged."""
    ref, pred = acdc_like_folders
    write_nifti(pred / "case1.nii.gz", {(2, 1, 1): 1, (1, 3, 2): 7})
    with pytest.raises(UserError, match=r"pred/case1.nii.gz holds label values \[7\].*allowed: \[0, 1, 2, 3, 4\]"):
        evaluate_folder(ref, pred, ACDC_LIKE)
    write_nifti(pred / "case1.nii.gz", {})
    write_nifti(ref / "case2.nii.gz", {(1, 3, 1): 9})
    with pytest.raises(UserError, match=r"ref/case2.nii.gz holds label values \[9\]"):
        evaluate_folder(ref, pred, ACDC_LIKE)


# ----------------------------------------------------------------------------------------------------------------
# nnunet-semi evaluate on fake nnU-Net result trees
# ----------------------------------------------------------------------------------------------------------------

BINARY = {"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz", "numTraining": 2,
          "labels": {"background": 0, "organ": 1}}
ORGAN = [(1, 1, 1), (1, 1, 2), (1, 2, 1), (1, 2, 2)]


def make_model_folder(results, preprocessed, dataset, trainer, overlap, epoch_seconds, folds=(0, 1)):
    """A trained model: fold f validates case_f; its prediction shares ``overlap`` of the 4 reference voxels
    (Dice = overlap / 4). Logs say 3 epochs of ``epoch_seconds`` (the first one slower) x 10 iterations."""
    model = results / dataset / f"{trainer}__nnUNetPlans__3d_fullres"
    gt = preprocessed / dataset / "gt_segmentations"
    shifted = [(1, 4, 4), (1, 4, 5), (1, 5, 4), (1, 5, 5)]
    for fold in folds:
        write_nifti(gt / f"case_{fold}.nii.gz", {p: 1 for p in ORGAN})
        write_nifti(model / f"fold_{fold}" / "validation" / f"case_{fold}.nii.gz",
                    {p: 1 for p in ORGAN[:overlap] + shifted[overlap:]})
        (model / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")  # validation finished
        (model / f"fold_{fold}" / "debug.json").write_text(json.dumps({"num_epochs": "3",
                                                                       "num_iterations_per_epoch": "10"}))
        (model / f"fold_{fold}" / "training_log_2025_1_1_00_00_00.txt").write_text("".join(
            f"2025-01-01 00:00:0{i}.000000: Epoch time: {t} s\n" for i, t in enumerate(
                [3 * epoch_seconds, epoch_seconds, epoch_seconds])))
    (model / "dataset.json").write_text(json.dumps(BINARY))
    (preprocessed / dataset / "splits_final.json").write_text(json.dumps(
        [{"train": [], "val": [f"case_{fold}"]} for fold in folds]))
    return model


@pytest.fixture()
def trained_models(tmp_path, monkeypatch):
    results, preprocessed = tmp_path / "results", tmp_path / "preprocessed"
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    return {
        "vanilla": make_model_folder(results, preprocessed, "Dataset002_Labeled", "nnUNetTrainer", 2, 10.0),
        "semi": make_model_folder(results, preprocessed, "Dataset001_Semi", "SemiTrainer", 3, 20.0),
        "full": make_model_folder(results, preprocessed, "Dataset003_Full", "nnUNetTrainer", 4, 10.0),
    }


def read_csv(path):
    with open(path) as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_seconds_per_iteration_skips_the_warm_up_epoch(trained_models):
    assert seconds_per_iteration(trained_models["semi"], [0, 1]) == pytest.approx(2.0)


def test_evaluate_model_folders_end_to_end(trained_models, tmp_path):
    out = tmp_path / "report"
    code = main(["evaluate", str(trained_models["vanilla"]), str(trained_models["semi"]), str(trained_models["full"]),
                 "--names", "nnU-Net", "Semi", "nnU-Net (all labels)", "--reference", "nnU-Net",
                 "--upper-bound", "nnU-Net (all labels)", "-o", str(out)])
    assert code == 0
    rows = read_csv(out / "report.csv")
    assert float(rows["Semi"]["Dice/mean/mean"]) == pytest.approx(0.75)
    assert float(rows["Semi"]["dice_gap_closed"]) == pytest.approx(0.5)  # (0.75 - 0.5) / (1 - 0.5)
    assert float(rows["Semi"]["time_vs_reference"]) == pytest.approx(2.0)
    markdown = (out / "report.md").read_text()
    assert "| Semi | 3 epochs x 10 it | 2 | 75.00 ± 0.00 |" in markdown
    assert "50.0%" in markdown and "2.00x" in markdown
    assert (out / "dice_per_method.png").stat().st_size > 0


def test_evaluate_errors_leave_the_previous_report_untouched(trained_models, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", str(trained_models["semi"]), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["evaluate", str(trained_models["semi"]), "--folds", "0", "7", "-o", str(out)]) == 2
    assert "Fold 7" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_unfinished_validation_is_refused(trained_models, capsys):
    (trained_models["semi"] / "fold_1" / "validation" / "summary.json").unlink()
    assert main(["evaluate", str(trained_models["semi"]), "-o", str(trained_models["semi"].parent / "r")]) == 2
    assert "fold 1" in capsys.readouterr().err


def test_evaluate_test_set_predictions(tmp_path, capsys):
    labels, predictions = tmp_path / "raw" / "labelsTs", tmp_path / "predictions"
    for case, overlap in (("a", 4), ("b", 2)):
        write_nifti(labels / f"{case}.nii.gz", {p: 1 for p in ORGAN})
        write_nifti(predictions / f"{case}.nii.gz", {p: 1 for p in ORGAN[:overlap]})
    (tmp_path / "raw" / "dataset.json").write_text(json.dumps(BINARY))
    out = tmp_path / "report"
    assert main(["evaluate", str(predictions), "-g", str(labels), "-o", str(out), "--metrics", "ssl4mis"]) == 0
    row = read_csv(out / "report.csv")["predictions"]
    assert row["split"] == "test"
    assert float(row["Dice/organ/mean"]) == pytest.approx((1 + 2 * 2 / 6) / 2)
    assert "HD95 (vox)" in (out / "report.md").read_text()
    write_nifti(labels / "c.nii.gz", {p: 1 for p in ORGAN})  # a test case without prediction
    assert main(["evaluate", str(predictions), "-g", str(labels), "-o", str(out)]) == 2
    assert "missing c" in capsys.readouterr().err
