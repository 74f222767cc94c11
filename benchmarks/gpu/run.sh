#!/usr/bin/env bash
# The GPU check kit's run (on the lent H200, or here with --smoke): vanilla nnU-Net (labeled-only twin), Mean Teacher
# and SRA-Seg on the kit's Kvasir-SEG 10 % (prepare.sh), one budget for all, the fixed test set predicted by stock
# nnUNetv2_predict, and $OUT/results.json + the report (markdown, Dice plot) + the run's log.
#
# Usage: benchmarks/gpu/run.sh [--smoke] [--kit DIR] [--budget EPOCHSxITS] [--folds "0 1 2"] [--deadline-s S]
#   default: --budget 20x50 (1000 iterations at nnU-Net's planned batch), --folds 0, --deadline-s 480, -device cuda
#   --smoke: this CPU machine, the current Python environment (nothing installed), --budget 2x2, -device cpu,
#            vanilla and Mean Teacher only, no learning curves (it checks the kit's plumbing; SRA-Seg and the curves
#            have their own end-to-end tests)
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
folds="0"
deadline_s=480
reserve_s=150  # prediction of the test set by every model, evaluation and the report
trainers="nnUNetTrainerMeanTeacher nnUNetTrainerSRASeg"
curves=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; shift ;;
    --kit) kit=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --folds) folds=$2; shift 2 ;;
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

if [ "$smoke" = 1 ]; then
  device=cpu; budget=2x2; reserve_s=60; trainers="nnUNetTrainerMeanTeacher"
  curves="--curve-every 0"  # learning curves have their own tests
  export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-2} nnUNet_def_n_proc=${nnUNet_def_n_proc:-2}
else
  device=cuda
  export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-12} nnUNet_def_n_proc=${nnUNet_def_n_proc:-16}
  python3 -m venv --system-site-packages /tmp/nnunet_semi_gpu_venv
  . /tmp/nnunet_semi_gpu_venv/bin/activate
  python -m pip install -q --no-index --no-deps --no-compile "$kit"/wheels/*.whl
  python -m pip install -q --no-index --no-deps --no-build-isolation "$repo"
fi
# SimpleITK is not carried (too large); the 2D PNG path only imports it. The smoke run uses the stand-in too.
export PYTHONPATH="$here/simpleitk_stub${PYTHONPATH:+:$PYTHONPATH}"
export nnUNet_compile=false  # torch.compile would spend minutes of the deadline compiling
rm -rf "$work"
export nnUNet_raw=$work/raw nnUNet_preprocessed=$work/preprocessed nnUNet_results=$work/results
nnunet_env=$(nnunet-semi env)  # an assignment, so that set -e sees a failure
eval "$nnunet_env"

nnunet-semi convert-2d "$kit/data/images" "$kit/data/masks" -o 501 -n KvasirGPU
nnunet-semi make-semi 501 -o 502 --labeled-list "$kit/data/labeled.txt" --holdout-list "$kit/data/test.txt"
nnunet-semi plan 502 -c 2d

training_s=$((deadline_s - ($(date +%s) - start) - reserve_s))
if [ "$training_s" -lt 30 ]; then
  echo "run.sh: setup left only ${training_s} s for training before the deadline; nothing trained." >&2
  exit 1
fi
# the trainings stop themselves at their shares; timeout is the hard stop if prediction or evaluation overrun
hard_stop_s=$((deadline_s - ($(date +%s) - start) - 15))
status=0
# shellcheck disable=SC2086
timeout --kill-after=10 "$hard_stop_s" nnunet-semi benchmark 502 -c 2d -tr $trainers -f $folds --budget "$budget" \
  --time-limit "$(python -c "print($training_s / 60)")" \
  --no-upper-bound $curves -device "$device" -o "$work/benchmark" --title "GPU kit: Kvasir-SEG 10 % at 256 x 256" || status=$?
python "$here/results.py" "$work/benchmark" -o "$out" --start "$start" --deadline-s "$deadline_s" \
  --smoke "$smoke" --benchmark-status "$status"
exit "$status"
