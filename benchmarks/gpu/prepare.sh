#!/usr/bin/env bash
# Prepares the GPU check kit here, on CPU: benchmarks/gpu/kit/ (git-ignored) with
#   wheels/  the packages of wheels.txt for CPython 3.12, manylinux x86_64 (pure-Python sdists built into wheels)
#   data/    Kvasir-SEG at 256 x 256 (JPEG images, PNG masks), test.txt (200 held-out cases), labeled.txt (10 %)
# and fails if the kit is larger than 60 MiB (the device takes 64 MiB with the working tree).
#
# Usage: benchmarks/gpu/prepare.sh [--source KVASIR_DIR] [--kit DIR] [--size 256] [--cases N] [--test-count N]
#                                  [--no-wheels]
#   --source      Kvasir-SEG folder (default: ../shared/data/Kvasir-SEG beside the repository)
#   --cases N     only the first N cases (smoke runs); --no-wheels skips the downloads (a CPU smoke run needs none)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source_dir="$repo/../shared/data/Kvasir-SEG"
kit="$here/kit"
cases=()
test_count=200
size=256
wheels=1
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_dir=$2; shift 2 ;;
    --kit) kit=$2; shift 2 ;;
    --cases) cases=(--cases "$2"); shift 2 ;;
    --test-count) test_count=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --no-wheels) wheels=0; shift ;;
    *) echo "prepare.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
limit_mib=60

if [ -e "$kit" ]; then
  echo "prepare.sh: $kit exists; remove it to prepare the kit again." >&2
  exit 2
fi
staging="$kit.partial"
rm -rf "$staging"
mkdir -p "$staging"

if [ "$wheels" = 1 ]; then
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
             --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  grep -v '^\s*#' "$here/wheels.txt" | grep -v '^\s*$' | while read -r requirement; do
    echo "wheel: $requirement"
    if ! "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$staging/wheels" "$requirement" 2>"$staging/pip-download.log"; then
      echo "  no CPython 3.12 wheel ($(tail -1 "$staging/pip-download.log")); building the sdist"
      # no wheel on the registry: build the sdist here; it must give a pure-Python (py3-none-any) wheel
      "$python" -m pip wheel -q --no-deps --no-binary=:all: -w "$staging/wheels" "$requirement"
    fi
  done
  rm -f "$staging/pip-download.log"
  for wheel in "$staging"/wheels/*.whl; do
    case "$wheel" in
      *-py3-none-any.whl|*-py2.py3-none-any.whl|*cp312*|*abi3*) ;;
      *) echo "prepare.sh: $wheel does not install on CPython 3.12" >&2; exit 1 ;;
    esac
  done
fi

"$python" "$here/prepare_data.py" "$source_dir" -o "$staging/data" --size "$size" --test-count "$test_count" \
  ${cases[@]+"${cases[@]}"}

bytes=$(du -sb "$staging" | cut -f1)
echo "kit: $((bytes / 1024 / 1024)) MiB ($bytes bytes) in $kit"
if [ "$bytes" -gt $((limit_mib * 1024 * 1024)) ]; then
  echo "prepare.sh: the kit is larger than $limit_mib MiB; it would not travel to the device." >&2
  exit 1
fi
mv "$staging" "$kit"
