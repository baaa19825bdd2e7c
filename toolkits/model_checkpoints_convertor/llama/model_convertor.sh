#!/bin/bash
. "$(dirname -- "$0")/../../_common.sh"  # re-exec under bash, ROOT, PYTHON, check, die
# Seed interface: MEGATRON_PATH SOURCE_CKPT_PATH TARGET_CKPT_PATH TP PP MODEL_NAME EXTRA_VOCAB_SIZE mg2hf
# mg2hf=false: HF Llama 2 (SOURCE) -> Megatron-Core checkpoint in the recipe's format (convert.format of
#              recipes/llama2: legacy, split for TP/PP, as the original writes it; FORMAT=torch_dist: layout-free).
# mg2hf=true:  Megatron-Core (SOURCE) -> HF (TARGET); set HF_DIR to the HF checkpoint for config and tokenizer.
# MEGATRON_PATH is accepted for compatibility (megatron-core comes from the venv). EXTRA_VOCAB_SIZE must be 0:
# the vocabulary is padded automatically (to a multiple of 128, independent of TP).
usage() { echo "usage: $0 MEGATRON_PATH SRC DST TP PP MODEL_NAME(llama-tiny|llama-7b|llama-13b|llama-70b) EXTRA_VOCAB_SIZE(0) mg2hf(true|false)" >&2; exit 2; }
[ $# -ge 8 ] || usage
SRC=$2; DST=$3; TP=$4; PP=$5; MODEL_NAME=$6; EXTRA_VOCAB_SIZE=$7; MG2HF=$8
check MODEL_NAME "$MODEL_NAME" "llama-tiny llama-7b llama-13b llama-70b"
check EXTRA_VOCAB_SIZE "$EXTRA_VOCAB_SIZE" "0"
check mg2hf "$MG2HF" "true false"
check_positive TP PP
SIZE=${MODEL_NAME#llama-}; [ "$SIZE" = tiny ] || SIZE=$(echo "$SIZE" | tr '[:lower:]' '[:upper:]')  # llama-7b -> 7B

if [ "$MG2HF" = true ]; then
  [ -n "${HF_DIR:-}" ] || die "mg2hf=true needs HF_DIR=<the HF checkpoint for config and tokenizer>"
  launch "$SRC" "$PYTHON" -m pai_patch convert mcore2hf --model llama2 --size "$SIZE" --mcore "$SRC" --hf "$DST" --source-hf "$HF_DIR"
fi
FORMAT=${FORMAT:-$(recipe_value llama2 convert.format size="$SIZE")}
launch "$SRC" "$PYTHON" -m pai_patch convert hf2mcore --model llama2 --size "$SIZE" --hf "$SRC" --mcore "$DST" \
  --tp "$TP" --pp "$PP" --format "$FORMAT"
