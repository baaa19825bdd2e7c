#!/bin/bash
. "$(dirname -- "$0")/../../../_common.sh"  # re-exec under bash, ROOT, PYTHON, check, die
# Seed interface: MODEL_SIZE LOAD_DIR SAVE_DIR MG2HF USE_CUDA PR [HF_DIR]
# MG2HF=false: HF (LOAD_DIR) -> torch_dist (SAVE_DIR), which loads at any TP/PP/EP.
# MG2HF=true:  Megatron-Core (LOAD_DIR, torch_dist or legacy, e.g. a training checkpoint) -> HF (SAVE_DIR);
#              config + tokenizer from HF_DIR.
# USE_CUDA is accepted for compatibility: conversion streams tensors from disk to disk, so the CPU is enough.
usage() { echo "usage: $0 MODEL_SIZE(tiny|0.5B|1.5B|3B|7B|14B|32B|72B) LOAD_DIR SAVE_DIR MG2HF(true|false) USE_CUDA(true|false) PR(fp32|bf16|fp16) [HF_DIR]" >&2; exit 2; }
[ $# -ge 6 ] || usage
MODEL_SIZE=$1; LOAD_DIR=$2; SAVE_DIR=$3; MG2HF=$4; USE_CUDA=$5; PR=$6; HF_DIR=${7:-}
check MODEL_SIZE "$MODEL_SIZE" "tiny 0.5B 1.5B 3B 7B 14B 32B 72B"
check MG2HF "$MG2HF" "true false"
check USE_CUDA "$USE_CUDA" "true false"
check PR "$PR" "fp32 bf16 fp16"

if [ "$MG2HF" = true ]; then
  [ -n "$HF_DIR" ] || die "MG2HF=true needs HF_DIR (7th argument): the HF checkpoint for config and tokenizer"
  launch "$LOAD_DIR" "$PYTHON" -m pai_patch convert mcore2hf --model qwen2_5 --size "$MODEL_SIZE" --mcore "$LOAD_DIR" \
    --hf "$SAVE_DIR" --source-hf "$HF_DIR" --dtype "$PR"
fi
launch "$LOAD_DIR" "$PYTHON" -m pai_patch convert hf2mcore --model qwen2_5 --size "$MODEL_SIZE" --hf "$LOAD_DIR" --mcore "$SAVE_DIR" \
  --format torch_dist --dtype "$PR"
