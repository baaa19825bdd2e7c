#!/usr/bin/env bash
# The whole GPU check in one run (`make gpu-check`), prepared to work the first time on a
# machine we cannot try beforehand: environment, throughput benchmark, GPU tests, and a
# results section ready to paste into bench/RESULTS.md.  Everything lands in $OUT (or
# bench/_work/device_check), at most six files:
#   device_check.log  everything printed          doctor.json       `python -m pai_patch doctor --json`
#   bench_gpu.json    bench/gpu.py's results      bench_gpu.log     the benchmark children's output
#   gpu_tests.xml     pytest -m gpu (JUnit)       results_section.md  bench/record.py's section
#
# It needs a python with CUDA PyTorch.  megatron-core, if that python lacks it, is installed
# from a wheelhouse carried with the working tree (no network on the GPU machine):
#   bash bench/device_check.sh --fetch-wheels   # here, with PyPI: megatron-core for cp312 into bench/_work/wheels
# then run this script there with bench/_work/wheels carried (docs/image.md).
#
# Knobs (environment): PYTHON (interpreter), WHEELS (wheelhouse), SHAPE_BUDGET (s per benchmark
# shape, default 100), TESTS_BUDGET (s for all GPU tests, default 150), TEST_TIMEOUT (s per
# test, default 90), BENCH_ARGS (extra bench/gpu.py arguments, e.g. `--accum 1` for the first sessions'
# one micro batch per optimizer step), PYVER (--fetch-wheels target).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=${WHEELS:-$ROOT/bench/_work/wheels}

if [[ ${1:-} == --fetch-wheels ]]; then
    pin=$(grep -i '^megatron-core==' requirements.lock) || { echo "error: requirements.lock pins no megatron-core" >&2; exit 2; }
    pyver=${PYVER:-3.12}
    mkdir -p "$WHEELS"
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "$pin" || exit 1
    ls -l "$WHEELS"
    exit 0
fi

OUT=${OUT:-$ROOT/bench/_work/device_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
status=0
say() { printf '\n==== %s ====\n' "$*"; }

# -- which python: one whose torch sees the GPU (a CPU-only .venv carried along is no use there)
gpu_present=0
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && gpu_present=1
PY=
for candidate in ${PYTHON:-} "$ROOT/.venv/bin/python" python3 python; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() or not $gpu_present else 1)" 2>/dev/null; then
        PY=$(command -v "$candidate"); break
    fi
done
if [[ -z $PY ]]; then
    echo "error: no python here imports torch$( ((gpu_present)) && echo ' with CUDA'); set PYTHON=/path/to/python"
    exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# -- megatron-core: the python's own, else the carried wheelhouse
if ! "$PY" -c "import megatron.core" 2>/dev/null; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        site=$(mktemp -d /tmp/pai-site.XXXXXX)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl \
            || { echo "error: installing the wheelhouse $WHEELS into $site failed"; exit 2; }
        export PYTHONPATH="$ROOT:$site${PYTHONPATH#"$ROOT"}"
    fi
    if ! "$PY" -c "import megatron.core" 2>/dev/null; then
        echo "error: $PY has no megatron-core and $WHEELS holds no wheel that provides it for python" \
             "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); run" \
             "'bash bench/device_check.sh --fetch-wheels' (PYVER=that version) where PyPI is reachable and carry $WHEELS"
        exit 2
    fi
fi

say "environment"
date -u
echo "python: $PY"
echo "PYTHONPATH: $PYTHONPATH"
if ((gpu_present)); then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
"$PY" -m pai_patch doctor
"$PY" -m pai_patch doctor --json >"$OUT/doctor.json"

say "benchmark: bench/gpu.py (each shape within ${SHAPE_BUDGET:-100} s)"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
"$PY" bench/gpu.py --out "$OUT" --budget-s "${SHAPE_BUDGET:-100}" ${BENCH_ARGS:-} || status=1

say "GPU tests: pytest -m gpu tests/gpu (${TEST_TIMEOUT:-90} s each, ${TESTS_BUDGET:-150} s in all)"
per_test=()
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout "${TEST_TIMEOUT:-90}")
timeout --kill-after 10 "${TESTS_BUDGET:-150}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu \
    "${per_test[@]}" --junitxml "$OUT/gpu_tests.xml" -p no:logging -rfEsp || status=1

say "results section (bench/record.py)"
if [[ -f $OUT/bench_gpu.json ]]; then
    "$PY" bench/record.py "$OUT/bench_gpu.json" --print >"$OUT/results_section.md" && cat "$OUT/results_section.md"
else
    echo "no bench_gpu.json: the benchmark did not run"; status=1
fi
echo
echo "device check finished with status $status; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $status
