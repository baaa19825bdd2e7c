# Shared prelude of the seed-interface wrappers under toolkits/; each sources it first thing with
#     . "$(dirname -- "$0")/../_common.sh"        (the relative path from the wrapper to this file)
# The seeds call some wrappers with `sh` (dash), so this file is POSIX up to the re-exec below;
# from there on the wrapper and this file run under bash.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

# ROOT: the repository; PYTHON: $PYTHON if set, else .venv/bin/python, else python; pai_patch importable.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# die MESSAGE: one line on stderr, exit 2 (bad input, as the Python CLI does)
die() { echo "error: $*" >&2; exit 2; }

# recipe_value RECIPE KEY [key=value ...]: one value of the resolved recipe, so that a wrapper's defaults
# (e.g. the converter's output format) are the recipe's and a converted checkpoint loads in its training
recipe_value() { "$PYTHON" -m pai_patch recipe get "$@"; }

# dry_run: true when DRY_RUN is set to anything but 0/false (as `make` and the seed launchers read it)
dry_run() { case "${DRY_RUN:-0}" in ""|0|false) return 1 ;; esac; }

# launch CHECKPOINT CMD...: exec CMD. Under DRY_RUN only check that CHECKPOINT, the input checkpoint
# directory, exists, print CMD and exit 0: a job is rehearsed before it is queued.
launch() {
  local checkpoint=$1
  shift
  if dry_run; then
    [ -d "$checkpoint" ] || die "$checkpoint: no such checkpoint directory"
    printf '+'; printf ' %q' "$@"; printf '\n'
    exit 0
  fi
  exec "$@"
}

# check NAME VALUE "ALLOWED ...": VALUE must be one of the space-separated ALLOWED words
check() { case " $3 " in *" $2 "*) ;; *) die "$1=$2; allowed: $3" ;; esac; }

# check_positive NAME ...: each named variable must hold a positive integer
check_positive() {
  local name
  for name in "$@"; do [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name=${!name}; allowed: a positive integer"; done
}

# tokenizer_short_name TOKENIZER_NAME: the seeds' short name in output file names (DeepSeekV2Tokenizer -> deepseekv2)
tokenizer_short_name() {
  case "$1" in
    DeepSeekV2Tokenizer) echo deepseekv2 ;;
    Qwen2Tokenizer) echo qwen2 ;;
    LLamaTokenizer|LlamaTokenizer) echo llama ;;
    *) echo "$1" | tr '[:upper:]' '[:lower:]' | sed 's/tokenizer$//' ;;
  esac
}
