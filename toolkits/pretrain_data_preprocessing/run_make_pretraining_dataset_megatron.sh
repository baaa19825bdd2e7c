#!/bin/bash
. "$(dirname -- "$0")/../_common.sh"  # re-exec under bash, ROOT, PYTHON, tokenizer_short_name
# Seed interface: INPUT_JSON TOKENIZER_NAME JSON_KEY OUTPUT_DIR TOKENIZER_DIR
# Writes OUTPUT_DIR/mmap_<name>_datasets_<JSON_KEY>_document.bin/.idx (e.g. mmap_deepseekv2_datasets_text_document).
# Thin wrapper over `python -m pai_patch preprocess pretrain`; WORKERS (default: CPU count) sets --workers,
# EXTRA_ARGS is appended (e.g. EXTRA_ARGS=--skip-bad-lines).
if [ $# -lt 5 ]; then
  echo "usage: $0 INPUT_JSON TOKENIZER_NAME JSON_KEY OUTPUT_DIR TOKENIZER_DIR" >&2
  echo "  TOKENIZER_NAME: DeepSeekV2Tokenizer | Qwen2Tokenizer | LLamaTokenizer | LlamaTokenizer | any name (TOKENIZER_DIR is used)" >&2
  exit 2
fi
INPUT=$1
TOKENIZER=$2
JSON_KEY=$3
OUTPUT_DIR=${4%/}  # the seeds pass /mnt/deepseek-datasets/: no "//" in the printed paths
TOKENIZER_DIR=$5

NAME=$(tokenizer_short_name "$TOKENIZER")

mkdir -p "$OUTPUT_DIR"

START=$SECONDS
"$PYTHON" -m pai_patch preprocess pretrain \
  --input "$INPUT" \
  --json-key "$JSON_KEY" \
  --tokenizer "$TOKENIZER_DIR" \
  --output-prefix "$OUTPUT_DIR/mmap_${NAME}_datasets" \
  --workers "${WORKERS:-$(nproc)}" \
  --append-eod \
  ${EXTRA_ARGS:-}
echo "done in $((SECONDS - START))s: $OUTPUT_DIR/mmap_${NAME}_datasets_${JSON_KEY}_document.bin/.idx"
