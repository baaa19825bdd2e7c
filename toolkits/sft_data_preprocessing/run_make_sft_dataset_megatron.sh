#!/bin/bash
# The seeds call this with `sh`; the body needs bash.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
# INPUT_JSON TOKENIZER_NAME FORMAT SEQ_LEN OUTPUT_DIR TOKENIZER_DIR [PACK]
# Writes OUTPUT_DIR/mmap_<name>_sft_datasets_text_document.bin/.idx, the matching _loss_mask_document
# and _sft.json.  FORMAT: alpaca | sharegpt | messages.  PACK: true to pack several samples per sequence.
# Thin wrapper over `python -m pai_patch preprocess sft`; EXTRA_ARGS is appended.
set -euo pipefail

if [ $# -lt 6 ]; then
  echo "usage: $0 INPUT_JSON TOKENIZER_NAME FORMAT SEQ_LEN OUTPUT_DIR TOKENIZER_DIR [PACK=false]" >&2
  exit 2
fi
INPUT=$1
TOKENIZER=$2
FORMAT=$3
SEQ_LEN=$4
OUTPUT_DIR=$5
TOKENIZER_DIR=$6
PACK=${7:-false}

case "$TOKENIZER" in
  DeepSeekV2Tokenizer) NAME=deepseekv2 ;;
  Qwen2Tokenizer) NAME=qwen2 ;;
  LLamaTokenizer|LlamaTokenizer) NAME=llama ;;
  *) NAME=$(echo "$TOKENIZER" | tr '[:upper:]' '[:lower:]' | sed 's/tokenizer$//') ;;
esac
PACK_ARG=()
[ "$PACK" = "true" ] && PACK_ARG=(--pack)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=python
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
mkdir -p "$OUTPUT_DIR"

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pai_patch preprocess sft \
  --input "$INPUT" \
  --format "$FORMAT" \
  --seq-length "$SEQ_LEN" \
  --tokenizer "$TOKENIZER_DIR" \
  --output-prefix "$OUTPUT_DIR/mmap_${NAME}_sft_datasets" \
  "${PACK_ARG[@]}" \
  ${EXTRA_ARGS:-}
