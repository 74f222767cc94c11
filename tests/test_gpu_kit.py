"""The GPU check kit (benchmarks/gpu): its wheels cover what the run imports, and its smoke mode runs here."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_semi.toy_data import write_toy_2d_folders

KIT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"

# what run.sh imports: nnU-Net's planning, training and prediction, our CLI, trainers and benchmark
RUN_IMPORTS = ["nnunetv2.run.run_training", "nnunetv2.inference.predict_from_raw_data",
               "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "nnunet_semi.cli",
               "nnunet_semi.trainers", "nnunet_semi.evaluation.benchmark", "nnunet_semi.planners.convert_2d",
               "nnunet_semi.planners.make_semi", "nnunet_semi.planners.plan"]
# imported here, but not needed on the device machine (besides what the device's own packages bring along)
NOT_NEEDED = {
    "nnunet-semi": "installed from the working tree by run.sh",
    "imagecodecs": "an optional import of tifffile (try/except), unused for PNG",
}


def _names(path: Path) -> set[str]:
    words = [w for line in path.read_text().splitlines() if not line.lstrip().startswith("#") for w in line.split()]
    return {_normalise(re.split(r"[=<>]", w)[0]) for w in words}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_wheels_and_device_packages_cover_what_the_run_imports():
    """Every distribution that the kit's run imports is on the device or among the carried wheels; SimpleITK is
    the stand-in (its wheel does not fit the kit)."""
    code = f"""
import importlib, importlib.metadata as md, json, re, sys
for name in {RUN_IMPORTS!r}:
    importlib.import_module(name)
from nnunet_semi.components.feature_extractors import load_efficientnet_lite0
load_efficientnet_lite0()
owners = md.packages_distributions()
device = set(json.loads(sys.argv[1]))
def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()
brought = set()  # requirements of the device's packages, recursively, as installed here
todo = [d.metadata["Name"] for d in md.distributions() if normalise(d.metadata["Name"]) in device]
while todo:
    try:
        requirements = md.requires(todo.pop()) or []
    except md.PackageNotFoundError:
        continue
    for requirement in requirements:
        name = normalise(re.split(r"[ ;<>=!~\\[(]", requirement, maxsplit=1)[0])
        if name not in brought:
            brought.add(name)
            todo.append(name)
top = [n for n in list(sys.modules) if "." not in n and n not in sys.stdlib_module_names and n != "SimpleITK"]
print(json.dumps({{"distributions": sorted({{d for n in top for d in owners.get(n, [])
                                             if normalise(d) not in brought}}),
                  "simpleitk": sys.modules["SimpleITK"].__file__}}))
"""
    env = {**os.environ, "PYTHONPATH": str(KIT / "simpleitk_stub")}
    device = sorted(_names(KIT / "device_packages.txt"))
    result = subprocess.run([sys.executable, "-c", code, json.dumps(device)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(imported["simpleitk"]).is_relative_to(KIT / "simpleitk_stub")
    available = _names(KIT / "device_packages.txt") | _names(KIT / "wheels.txt") | set(NOT_NEEDED)
    missing = sorted(d for d in imported["distributions"] if _normalise(d) not in available)
    assert not missing, f"add these to benchmarks/gpu/wheels.txt: {missing}"


def test_simpleitk_stand_in_names_what_is_missing():
    env = {**os.environ, "PYTHONPATH": str(KIT / "simpleitk_stub")}
    result = subprocess.run([sys.executable, "-c", "import SimpleITK; SimpleITK.ReadImage('x.nii.gz')"],
                            capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "SimpleITK is not installed on this machine" in result.stderr


def _kvasir_like_source(folder: Path) -> Path:
    """Kvasir-SEG's layout (images/, masks/ with 0/255 masks), from the toy generator."""
    images, masks = write_toy_2d_folders(folder, num_cases=30, size=64)
    for mask in masks.iterdir():
        Image.fromarray(((np.array(Image.open(mask)) > 0) * 255).astype(np.uint8)).save(mask)
    return folder


@pytest.mark.e2e
def test_prepare_and_smoke_run(tmp_path):
    """prepare.sh (no wheels) and run.sh --smoke: plan, two trainings, stock prediction, results.json."""
    source = _kvasir_like_source(tmp_path / "kvasir")
    kit = tmp_path / "kit"
    prepared = subprocess.run(["bash", str(KIT / "prepare.sh"), "--source", str(source), "--kit", str(kit),
                               "--no-wheels", "--size", "48", "--test-count", "5"], capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert len((kit / "data" / "test.txt").read_text().split()) == 5
    assert len((kit / "data" / "labeled.txt").read_text().split()) == 2  # 10 % of 25, at least 2
    again = subprocess.run(["bash", str(KIT / "prepare.sh"), "--source", str(source), "--kit", str(kit)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr  # a prepared kit is never overwritten

    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "KIT_WORK": str(tmp_path / "work"),
           "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ["PATH"]))}  # this environment's
    run = subprocess.run(["bash", str(KIT / "run.sh"), "--smoke", "--kit", str(kit), "--deadline-s", "900"],
                         capture_output=True, text=True, env=env, timeout=1000)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["smoke"] and results["complete"] and results["deadline_met"]
    assert list(results["methods"]) == ["nnU-Net (labeled only)", "nnUNetTrainerMeanTeacher"]  # smoke: no SRA-Seg
    for method in results["methods"].values():
        assert 0 <= method["test_dice"]["mean"] <= 1 and method["seconds_per_iteration"] > 0
        assert method["training"]["0"]["epochs_trained"] == 2
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "dice_per_method.png", "run.log",
                                                "logs.tar.gz"}
    with tarfile.open(out / "logs.tar.gz") as logs:
        names = logs.getnames()
    assert any(n.endswith("progress.png") for n in names) and any("training_log_" in n for n in names)


def _timing(rows: dict[str, float]) -> dict:
    return {"rows": [{"trainer": t, "seconds_per_iteration": s} for t, s in rows.items()]}


def test_auto_budget_fits_the_slowest_fold_of_every_row(tmp_path):
    """budget.py: epochs = (seconds - rows x start-up) / sum over rows of (iterations x slowest s/it + epoch cost),
    with the longest epoch (250, 100, 50 iterations) that still gives the minimum number of epochs."""
    sys.path.insert(0, str(KIT))
    try:
        import budget
    finally:
        sys.path.remove(str(KIT))
    timings = [_timing({"nnUNetTrainer": 0.05, "MT": 0.10}), _timing({"nnUNetTrainer": 0.07, "MT": 0.09})]
    speeds = budget.slowest_seconds_per_iteration(timings)
    assert speeds == {"nnUNetTrainer": 0.07, "MT": 0.10}
    # (600 - 2 x 45) / ((100 x 0.07 + 3) + (100 x 0.10 + 3)) = 510 / 23 = 22.2
    assert budget.affordable_epochs(speeds, 600, 100, 45, 3) == 22
    assert budget.affordable_epochs(speeds, 80, 100, 45, 3) == 0
    # 250-iteration epochs: 510 / (20.5 + 28) = 10.5 -> 10 epochs; 8 would not do for 20 epochs, 100 gives 22
    assert budget.choose_budget(speeds, 600, 10, 45, 3) == (10, 250)
    assert budget.choose_budget(speeds, 600, 20, 45, 3) == (22, 100)
    for i, timing in enumerate(timings):
        (tmp_path / f"t{i}.json").write_text(json.dumps(timing))
    command = [sys.executable, str(KIT / "budget.py"), str(tmp_path / "t0.json"), str(tmp_path / "t1.json")]
    fits = subprocess.run([*command, "--seconds", "600", "--min-epochs", "20"], capture_output=True, text=True)
    assert fits.returncode == 0 and fits.stdout.strip() == "22x100"
    too_short = subprocess.run([*command, "--seconds", "80"], capture_output=True, text=True)
    assert too_short.returncode == 1 and "not even one epoch" in too_short.stderr
