#!/usr/bin/env bash
# The GPU check kit's run (on the lent H200, or here with --smoke): vanilla nnU-Net (labeled-only twin), Mean Teacher
# and SRA-Seg on the kit's Kvasir-SEG 10 % (prepare.sh), one budget for all, the fixed test set predicted by stock
# nnUNetv2_predict (without test-time mirroring), and $OUT/results.json + the report (markdown, Dice plot, learning
# curves) + the run's log + logs.tar.gz (every training's nnU-Net log and progress plot).
#
# Usage: benchmarks/gpu/run.sh [--smoke] [--kit DIR] [--budget EPOCHSxITS|auto] [--folds "0 1 2"]
#                              [--trainers "T1 T2"] [--deadline-s S]
#   default: --budget 20x50 (1000 iterations at nnU-Net's planned batch), --folds 0, --deadline-s 480, -device cuda,
#            --trainers "nnUNetTrainerMeanTeacher nnUNetTrainerSRASeg" (vanilla nnU-Net is always the reference)
#   --budget auto: times every row's iterations first (benchmarks/bench_iteration_time.py, once per fold, in
#            parallel like the trainings) and takes the largest budget (at least 10 epochs of 250, 100 or 50
#            iterations) that lets every training end before the deadline (benchmarks/gpu/budget.py);
#            results.json keeps the timings
#   --smoke: this CPU machine, the current Python environment (nothing installed), --budget 2x2 unless given,
#            -device cpu, vanilla and Mean Teacher only, no learning curves (it checks the kit's plumbing; SRA-Seg
#            and the curves have their own end-to-end tests)
# The folds train in parallel (one 'nnunet-semi benchmark' per fold, each training its rows in turn, nnU-Net's
# data-augmentation workers split between them); with several folds, a last
# 'benchmark --no-train' writes the report over all of them.
# Everything runs against a hard deadline (default 8 minutes from the start): the trainings share what is left after
# setup minus a reserve for prediction and evaluation; a training past its share stops after its epoch with
# nnU-Net's final checkpoint and validation, and results.json says so ("stopped_at_time_limit").
set -euo pipefail
start=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
kit="$here/kit"
smoke=0
budget=20x50
budget_given=0
folds="0"
deadline_s=480
reserve_s=150  # prediction of the test set by every model, evaluation and the report
trainers="nnUNetTrainerMeanTeacher nnUNetTrainerSRASeg"
curves=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; shift ;;
    --kit) kit=$2; shift 2 ;;
    --budget) budget=$2; budget_given=1; shift 2 ;;
    --folds) folds=$2; shift 2 ;;
    --trainers) trainers=$2; shift 2 ;;
    --deadline-s) deadline_s=$2; shift 2 ;;
    *) echo "run.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
out=${OUT:-$here/results}
work=${KIT_WORK:-/tmp/nnunet_semi_gpu_kit}
mkdir -p "$out"
exec > >(tee "$out/run.log") 2>&1
tee_pid=$!
trap 'exec >&- 2>&-; wait "$tee_pid" 2>/dev/null || true' EXIT  # the log's last lines too
[ -d "$kit/data" ] || { echo "run.sh: no kit in $kit: run benchmarks/gpu/prepare.sh first." >&2; exit 2; }

n_folds=$(echo $folds | wc -w)
if [ "$smoke" = 1 ]; then
  device=cpu; reserve_s=60; trainers="nnUNetTrainerMeanTeacher"
  [ "$budget_given" = 1 ] || budget=2x2
  curves="--curve-every 0"  # learning curves have their own tests
  export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1} nnUNet_def_n_proc=${nnUNet_def_n_proc:-2}
else
  device=cuda
  export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-$((12 / n_folds > 2 ? 12 / n_folds : 2))} \
    nnUNet_def_n_proc=${nnUNet_def_n_proc:-16}
  # the machine's python3 is itself a venv (a venv made from it would not see its torch): install beside it
  site=/tmp/nnunet_semi_gpu_site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-build-isolation --target "$site" \
    "$kit"/wheels/*.whl "$repo"
  # 'python' for the scripts below: a wrapper, since a symbolic link to a venv's interpreter leaves the venv
  printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > "$site/bin/python"
  chmod +x "$site/bin/python"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
fi
# SimpleITK is not carried (too large); the 2D PNG path only imports it. The smoke run uses the stand-in too.
export PYTHONPATH="$here/simpleitk_stub${PYTHONPATH:+:$PYTHONPATH}"
export nnUNet_compile=false  # torch.compile would spend minutes of the deadline compiling
# fail here, in seconds, if nnUNetv2_train would not find our trainers (nnU-Net prints where it searched)
python -c "import torch; from nnunet_semi.env import register_ext_trainers; register_ext_trainers()
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
print(find('nnUNetTrainerMeanTeacher_1epochs_1its'), 'torch', torch.__version__,
      'cuda' if torch.cuda.is_available() else 'no cuda')"
rm -rf "$work"
export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/preprocessed nnUNet_results=$work/results
nnunet_env=$(nnunet-semi env)  # an assignment, so that set -e sees a failure
eval "$nnunet_env"

nnunet-semi convert-2d "$kit/data/images" "$kit/data/masks" -o 501 -n KvasirGPU
nnunet-semi make-semi 501 -o 502 --labeled-list "$kit/data/labeled.txt" --holdout-list "$kit/data/test.txt"
nnunet-semi plan 502 -c 2d

if [ "$budget" = auto ]; then
  timing_pids=()
  for fold in $folds; do  # one timing per fold, in parallel, as the folds will train
    python "$repo/benchmarks/bench_iteration_time.py" --dataset 502 -c 2d --trainers $trainers --iterations 15 \
      --warmup 5 --device "$device" --output "$work/iteration_time_fold$fold.json" \
      > "$work/iteration_time_fold$fold.log" 2>&1 &
    timing_pids+=($!)
  done
  timed=1
  for pid in "${timing_pids[@]}"; do wait "$pid" || timed=0; done
  if [ "$timed" = 1 ]; then
    budget=$(python "$here/budget.py" "$work"/iteration_time_fold*.json \
      --seconds $((deadline_s - ($(date +%s) - start) - reserve_s)))
  else  # the trainings still run, at a guessed budget, with the time limit as the guard
    tail -n 20 "$work"/iteration_time_fold*.log
    budget=6x250
    echo "run.sh: the timing failed (above); training at the guessed budget $budget"
  fi
fi

training_s=$((deadline_s - ($(date +%s) - start) - reserve_s))
if [ "$training_s" -lt 30 ]; then
  echo "run.sh: setup left only ${training_s} s for training before the deadline; nothing trained." >&2
  exit 1
fi
# the trainings stop themselves at their shares; timeout is the hard stop if prediction or evaluation overrun
hard_stop_s=$((deadline_s - ($(date +%s) - start) - 15))
time_limit=$(python -c "print($training_s / 60)")
common=(-c 2d -tr $trainers --budget "$budget" --time-limit "$time_limit" --no-upper-bound --disable-tta $curves
        -device "$device" --title "GPU kit: Kvasir-SEG 10 % at 256 x 256")
echo "budget $budget, folds $folds in parallel, ${training_s} s for training"
status=0
fold_pids=()
for fold in $folds; do  # each fold in its own folder: nothing is written twice at the same time
  timeout --kill-after=10 "$hard_stop_s" nnunet-semi benchmark 502 "${common[@]}" -f "$fold" \
    -o "$work/benchmark_fold$fold" > "$work/benchmark_fold$fold.log" 2>&1 &
  fold_pids+=($!)
done
for pid in "${fold_pids[@]}"; do wait "$pid" || status=$?; done
mkdir -p "$work/benchmark"
for fold in $folds; do
  tail -n 5 "$work/benchmark_fold$fold.log"
  # this fold's predictions, curve caches and logs
  [ ! -d "$work/benchmark_fold$fold" ] || cp -r "$work/benchmark_fold$fold/." "$work/benchmark/"
done
if [ "$status" = 0 ] && [ "$n_folds" -gt 1 ]; then
  # the report over all folds (one fold's report is already that): trainings and predictions exist, only
  # evaluation is left
  left_s=$((deadline_s - ($(date +%s) - start) - 10))
  [ "$left_s" -gt 0 ] || status=124
  # shellcheck disable=SC2086
  [ "$status" != 0 ] || timeout --kill-after=10 "$left_s" nnunet-semi benchmark 502 "${common[@]}" -f $folds \
    --no-train -o "$work/benchmark" || status=$?
fi
python "$here/results.py" "$work/benchmark" -o "$out" --start "$start" --deadline-s "$deadline_s" \
  --smoke "$smoke" --benchmark-status "$status" --timings "$work"/iteration_time_fold*.json
# every training's nnU-Net log and progress plot, and the benchmark's logs, in one archive
(cd "$work" && tar czf "$out/logs.tar.gz" --ignore-failed-read benchmark/logs benchmark_fold*.log \
  iteration_time_fold* $(ls -d results/*/*/fold_*/{training_log_*.txt,progress.png} 2>/dev/null)) || true
exit "$status"
