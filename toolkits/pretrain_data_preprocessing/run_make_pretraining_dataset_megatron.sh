#!/bin/bash
# The seeds call this with `sh`; the body needs bash.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
# Seed interface: INPUT_JSON TOKENIZER_NAME JSON_KEY OUTPUT_DIR TOKENIZER_DIR
# Writes OUTPUT_DIR/mmap_<name>_datasets_<JSON_KEY>_document.bin/.idx (e.g. mmap_deepseekv2_datasets_text_document).
# Thin wrapper over `python -m pai_patch preprocess pretrain`; WORKERS (default: CPU count) sets --workers,
# EXTRA_ARGS is appended (e.g. EXTRA_ARGS=--skip-bad-lines).
set -euo pipefail

if [ $# -lt 5 ]; then
  echo "usage: $0 INPUT_JSON TOKENIZER_NAME JSON_KEY OUTPUT_DIR TOKENIZER_DIR" >&2
  echo "  TOKENIZER_NAME: DeepSeekV2Tokenizer | Qwen2Tokenizer | LLamaTokenizer | LlamaTokenizer | any name (TOKENIZER_DIR is used)" >&2
  exit 2
fi
INPUT=$1
TOKENIZER=$2
JSON_KEY=$3
OUTPUT_DIR=$4
TOKENIZER_DIR=$5

case "$TOKENIZER" in
  DeepSeekV2Tokenizer) NAME=deepseekv2 ;;
  Qwen2Tokenizer) NAME=qwen2 ;;
  LLamaTokenizer|LlamaTokenizer) NAME=llama ;;
  *) NAME=$(echo "$TOKENIZER" | tr '[:upper:]' '[:lower:]' | sed 's/tokenizer$//') ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=python
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
mkdir -p "$OUTPUT_DIR"

START=$SECONDS
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pai_patch preprocess pretrain \
  --input "$INPUT" \
  --json-key "$JSON_KEY" \
  --tokenizer "$TOKENIZER_DIR" \
  --output-prefix "$OUTPUT_DIR/mmap_${NAME}_datasets" \
  --workers "${WORKERS:-$(nproc)}" \
  --append-eod \
  ${EXTRA_ARGS:-}
echo "done in $((SECONDS - START))s: $OUTPUT_DIR/mmap_${NAME}_datasets_${JSON_KEY}_document.bin/.idx"
