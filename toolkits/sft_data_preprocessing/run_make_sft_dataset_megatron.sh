#!/bin/bash
. "$(dirname -- "$0")/../_common.sh"  # re-exec under bash, ROOT, PYTHON, tokenizer_short_name
# INPUT_JSON TOKENIZER_NAME FORMAT SEQ_LEN OUTPUT_DIR TOKENIZER_DIR [PACK]
# Writes OUTPUT_DIR/mmap_<name>_sft_datasets_text_document.bin/.idx, the matching _loss_mask_document
# and _sft.json.  FORMAT: alpaca | sharegpt | messages.  PACK: true to pack several samples per sequence.
# Thin wrapper over `python -m pai_patch preprocess sft`; EXTRA_ARGS is appended.
if [ $# -lt 6 ]; then
  echo "usage: $0 INPUT_JSON TOKENIZER_NAME FORMAT SEQ_LEN OUTPUT_DIR TOKENIZER_DIR [PACK=false]" >&2
  exit 2
fi
INPUT=$1
TOKENIZER=$2
FORMAT=$3
SEQ_LEN=$4
OUTPUT_DIR=${5%/}  # a trailing slash (as the seeds write directories) would print "//"
TOKENIZER_DIR=$6
PACK=${7:-false}

NAME=$(tokenizer_short_name "$TOKENIZER")
PACK_ARG=()
[ "$PACK" = "true" ] && PACK_ARG=(--pack)

mkdir -p "$OUTPUT_DIR"

"$PYTHON" -m pai_patch preprocess sft \
  --input "$INPUT" \
  --format "$FORMAT" \
  --seq-length "$SEQ_LEN" \
  --tokenizer "$TOKENIZER_DIR" \
  --output-prefix "$OUTPUT_DIR/mmap_${NAME}_sft_datasets" \
  "${PACK_ARG[@]}" \
  ${EXTRA_ARGS:-}
