"""Which rows ``nnunet-semi benchmark`` trains: reference, methods (with the budget variant), optional upper bound;
which of its outputs it makes again."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nnunet_semi.evaluation import benchmark
from nnunet_semi.evaluation.benchmark import Run, benchmark_runs, postprocess_test_set
from nnunet_semi.evaluation.report import TrainingBudget
from nnunet_semi.planners.raw import MANIFEST_FILE


def make_semi_manifest(raw, semi="Dataset005_Semi", labeled="Dataset006_SemiLabeled", full="Dataset007_SemiFull"):
    for name in (semi, labeled, full):
        (raw / name).mkdir()
        (raw / name / "dataset.json").write_text("{}")
    (raw / semi / MANIFEST_FILE).write_text(json.dumps({
        "role": "semi", "labeled_twin": labeled, "full_twin": full,
        "labeled_cases": ["a", "b"], "unlabeled_cases": ["c", "d", "e", "f", "g", "h"]}))


def test_rows_with_and_without_upper_bound(nnunet_folders):
    make_semi_manifest(nnunet_folders["nnUNet_raw"])
    budget = TrainingBudget(2, 5)
    runs = benchmark_runs(["Dataset005_Semi"], ["nnUNetTrainerMeanTeacher"], budget)
    assert [(r.role, r.dataset, r.trainer) for r in runs] == [
        ("reference", "Dataset006_SemiLabeled", "nnUNetTrainer_2epochs_5its"),
        ("method", "Dataset005_Semi", "nnUNetTrainerMeanTeacher_2epochs_5its"),
        ("upper_bound", "Dataset007_SemiFull", "nnUNetTrainer_2epochs_5its")]
    assert runs[0].labeled_fraction == 0.25 and runs[2].labeled_fraction is None
    without = benchmark_runs(["Dataset005_Semi"], ["nnUNetTrainerMeanTeacher"], budget, with_upper_bound=False)
    assert [r.role for r in without] == ["reference", "method"]


def test_supervised_trainers_train_on_the_labeled_twin(nnunet_folders):
    """Regression: ``-tr nnUNetTrainer`` trained vanilla nnU-Net on the semi-supervised dataset, whose unlabeled cases
    carry only the ignore label, next to the real reference."""
    make_semi_manifest(nnunet_folders["nnUNet_raw"])
    runs = benchmark_runs(["Dataset005_Semi"], ["nnUNetTrainer", "nnUNetTrainerDA5", "nnUNetTrainerMeanTeacher",
                                                "nnUNetTrainerEMA", "nnUNetTrainerMeanTeacher_labeledOnly"],
                          TrainingBudget(2, 5), with_upper_bound=False)
    assert [(r.role, r.dataset, r.trainer) for r in runs] == [
        ("reference", "Dataset006_SemiLabeled", "nnUNetTrainer_2epochs_5its"),
        ("method", "Dataset006_SemiLabeled", "nnUNetTrainerDA5_2epochs_5its"),
        ("method", "Dataset005_Semi", "nnUNetTrainerMeanTeacher_2epochs_5its"),
        ("method", "Dataset006_SemiLabeled", "nnUNetTrainerEMA_2epochs_5its"),  # ours, but reads no unlabeled case
        ("method", "Dataset005_Semi", "nnUNetTrainerMeanTeacher_labeledOnly_2epochs_5its")]  # where it was measured


def test_unknown_trainer_or_configuration_stops_before_any_training(nnunet_folders, monkeypatch):
    """Regression: the baseline trained first, and only then an unknown trainer name failed."""
    import pytest

    from nnunet_semi.errors import UserError
    from nnunet_semi.evaluation.benchmark import check_trainers_and_configuration

    make_semi_manifest(nnunet_folders["nnUNet_raw"])
    plans = nnunet_folders["nnUNet_preprocessed"] / "Dataset006_SemiLabeled"
    plans.mkdir()
    (plans / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": {}}}))
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    runs = benchmark_runs(["Dataset005_Semi"], ["nnUNetTrainerMeanTeacher"], TrainingBudget(2, 5))
    check_trainers_and_configuration(runs, "2d", "nnUNetPlans")  # ours and budget variants are found
    with pytest.raises(UserError, match="not in plans 'nnUNetPlans'.*available: 2d"):
        check_trainers_and_configuration(runs, "3d_fullres", "nnUNetPlans")
    typo = benchmark_runs(["Dataset005_Semi"], ["nnUNetTrainerMeanTeacehr"], TrainingBudget(2, 5))
    with pytest.raises(UserError, match="Unknown trainer 'nnUNetTrainerMeanTeacehr_2epochs_5its'"):
        check_trainers_and_configuration(typo, "2d", "nnUNetPlans")


def test_our_names_resolve_without_nnunets_module_scan(monkeypatch):
    """Our trainers, nnU-Net's base trainer and `_<E>epochs_<I>its` budget variants resolve without nnU-Net's lookup
    (which fails in processes that imported `transformers`); other names still go through it, and a name nnU-Net
    does not know is None, while any other failure of its lookup is raised, not taken for an unknown name."""
    import nnunetv2.utilities.find_objects as find_objects
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_semi.evaluation.benchmark import resolve_trainer
    from nnunet_semi.trainers import TRAINERS, find_trainer_class

    def scan(name):
        if name == "nnUNetTrainerDA5":
            return nnUNetTrainer  # stands in for nnU-Net's class
        if name == "nnUNetTrainerBroken":
            raise RuntimeError("dictionary changed size during iteration")
        raise RuntimeError(f"Could not find requested nnunet trainer {name} in nnunetv2.training.nnUNetTrainer")

    monkeypatch.setattr(find_objects, "recursive_find_trainer_class_by_name", scan)
    assert find_trainer_class("nnUNetTrainerMeanTeacher") is TRAINERS["nnUNetTrainerMeanTeacher"]
    assert find_trainer_class("nnUNetTrainer") is nnUNetTrainer
    variant = find_trainer_class("nnUNetTrainer_7epochs_11its")
    assert issubclass(variant, nnUNetTrainer) and (variant.num_epochs, variant.num_iterations_per_epoch) == (7, 11)
    assert issubclass(find_trainer_class("nnUNetTrainerMeanTeacher_3epochs_5its"), TRAINERS["nnUNetTrainerMeanTeacher"])
    assert find_trainer_class("nnUNetTrainerDA5") is nnUNetTrainer  # nnU-Net's own names: its lookup
    assert resolve_trainer("nnUNetTrainerNope") is None
    assert resolve_trainer("nnUNetTrainerNope_3epochs_5its") is None
    with pytest.raises(RuntimeError, match="dictionary changed size"):
        resolve_trainer("nnUNetTrainerBroken")


def _age(path, seconds: float) -> None:
    """Set ``path``'s modification time to ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_postprocessing_rules_are_determined_again_after_a_new_validation_only(nnunet_folders, tmp_path,
                                                                                monkeypatch):
    """postprocess_test_set runs nnUNetv2_determine_postprocessing when the fold's rules are missing or older than
    its validation, and nnUNetv2_apply_postprocessing when a postprocessed test case is missing or older than the
    rules or its prediction."""
    run = Run("MT", "Dataset005_Semi", "T_2epochs_2its", "method", 0.25)
    validation = run.model_folder("2d", "nnUNetPlans") / "fold_0" / "validation"
    validation.mkdir(parents=True)
    images, predictions, output = tmp_path / "imagesTs", tmp_path / "predictions", tmp_path / "benchmark"
    images.mkdir()
    predictions.mkdir()
    for case in ("a", "b"):
        (images / f"{case}_0000.png").touch()
        (predictions / f"{case}.png").touch()
        _age(predictions / f"{case}.png", 100)
    (validation / "summary.json").touch()
    _age(validation / "summary.json", 100)
    commands = []

    def fake_run_logged(command: list[str], log, *args, **kwargs) -> None:  # writes what nnU-Net would
        commands.append(command[0])
        if command[0] == "nnUNetv2_determine_postprocessing":
            (validation / "postprocessing.pkl").touch()
        else:
            folder = Path(command[command.index("-o") + 1])
            folder.mkdir(parents=True, exist_ok=True)
            for case in ("a", "b"):
                (folder / f"{case}.png").touch()

    monkeypatch.setattr(benchmark, "_run_logged", fake_run_logged)

    def postprocessing_commands() -> list[str]:
        commands.clear()
        postprocess_test_set(run, "2d", "nnUNetPlans", 0, predictions, images, ".png", output, tmp_path / "logs")
        return commands

    assert postprocessing_commands() == ["nnUNetv2_determine_postprocessing", "nnUNetv2_apply_postprocessing"]
    assert postprocessing_commands() == []
    outputs = [validation / "postprocessing.pkl", *(output / "test_predictions_postprocessed").rglob("*.png")]

    def age_outputs() -> None:  # the rules and postprocessed cases of the last call, older than what comes next
        for path in outputs:
            _age(path, 50)

    age_outputs()
    (validation / "summary.json").touch()  # a new validation: new rules, applied again
    assert postprocessing_commands() == ["nnUNetv2_determine_postprocessing", "nnUNetv2_apply_postprocessing"]
    _age(validation / "summary.json", 100)
    age_outputs()
    (predictions / "b.png").touch()  # a new prediction: the same rules, applied again
    assert postprocessing_commands() == ["nnUNetv2_apply_postprocessing"]
