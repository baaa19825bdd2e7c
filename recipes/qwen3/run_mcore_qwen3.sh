#!/bin/sh
# The original toolkit's launcher interface: the 27 positional arguments of examples/qwen3/run_mcore_qwen3.sh
# (with ETP, and OPTIMIZER_OFFLOAD false or a fraction 0-1), mapped onto recipes/qwen3/recipe.yaml.
# Unknown values are rejected with the allowed list; DRY_RUN=1 prints the launch command only.
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
exec "$PY" -m pai_patch seed run_mcore_qwen3 "$@"
