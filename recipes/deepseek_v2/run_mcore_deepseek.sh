#!/bin/sh
# Seed-compatible launcher: the original positional interface of run_mcore_deepseek.sh, mapped onto
# recipes/deepseek_v2/recipe.yaml (see `python -m pai_patch seed run_mcore_deepseek --help` and README "Seed workflows").
# Unknown values are rejected with the allowed list; DRY_RUN=1 prints the job, its iteration count and the
# launch command, and refuses a PRETRAIN_CHECKPOINT_PATH that does not exist.
ROOT=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
exec "$PY" -m pai_patch seed run_mcore_deepseek "$@"
