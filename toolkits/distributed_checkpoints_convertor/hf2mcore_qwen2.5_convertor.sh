#!/bin/bash
. "$(dirname -- "$0")/../_common.sh"  # re-exec under bash, ROOT, PYTHON, check, die
# Seed interface: MODEL_SIZE SOURCE_CKPT_PATH TARGET_CKPT_PATH TP PP PR USE_TE mg2hf [HF_DIR]
# mg2hf=false: HF (SOURCE) -> Megatron-Core checkpoint in the recipe's format (convert.format of recipes/qwen2_5:
#              torch_dist, loads at any TP/PP); FORMAT=legacy writes rank files split for TP/PP.
# mg2hf=true:  Megatron-Core (SOURCE: converted or trained, legacy or torch_dist) -> HF (TARGET);
#              config + tokenizer from HF_DIR (TP/PP are read from the checkpoint itself).
usage() { echo "usage: $0 MODEL_SIZE(tiny|0.5B|1.5B|3B|7B|14B|32B|72B) SRC DST TP PP PR(fp32|bf16|fp16) USE_TE(true|false) mg2hf(true|false) [HF_DIR]" >&2; exit 2; }
[ $# -ge 8 ] || usage
MODEL_SIZE=$1; SRC=$2; DST=$3; TP=$4; PP=$5; PR=$6; USE_TE=$7; MG2HF=$8; HF_DIR=${9:-}
check MODEL_SIZE "$MODEL_SIZE" "tiny 0.5B 1.5B 3B 7B 14B 32B 72B"
check PR "$PR" "fp32 bf16 fp16"
check USE_TE "$USE_TE" "true false"
check mg2hf "$MG2HF" "true false"
check_positive TP PP

if [ "$MG2HF" = true ]; then
  [ -n "$HF_DIR" ] || die "mg2hf=true needs HF_DIR (9th argument): the HF checkpoint for config and tokenizer"
  launch "$SRC" "$PYTHON" -m pai_patch convert mcore2hf --model qwen2_5 --size "$MODEL_SIZE" --mcore "$SRC" --hf "$DST" \
    --source-hf "$HF_DIR" --dtype "$PR"
fi
TE_FLAG=(); [ "$USE_TE" = true ] && TE_FLAG=(--use-te)
FORMAT=${FORMAT:-$(recipe_value qwen2_5 convert.format size="$MODEL_SIZE")}
launch "$SRC" "$PYTHON" -m pai_patch convert hf2mcore --model qwen2_5 --size "$MODEL_SIZE" --hf "$SRC" --mcore "$DST" \
  --tp "$TP" --pp "$PP" --dtype "$PR" --format "$FORMAT" "${TE_FLAG[@]}"
