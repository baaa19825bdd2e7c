#!/bin/bash
. "$(dirname -- "$0")/../../_common.sh"  # re-exec under bash, ROOT, PYTHON, check, die
# Seed interface: MODEL_SIZE SOURCE_CKPT_PATH TARGET_CKPT_PATH TP PP EP PR USE_TE mg2hf [HG_CKPT_PATH]
# mg2hf=false: HF (SOURCE) -> Megatron-Core checkpoint (TARGET) in the recipe's format (convert.format of
#              recipes/deepseek_v2: torch_dist, which loads at any TP/PP/EP); FORMAT=legacy writes rank files
#              split for TP/PP/EP (TE names with USE_TE=true).
# mg2hf=true:  Megatron-Core (SOURCE, legacy or torch_dist) -> HF (TARGET); config + tokenizer from HG_CKPT_PATH.
# Thin wrapper over `python -m pai_patch convert`.
usage() { echo "usage: $0 MODEL_SIZE(tiny|A2.4B|A21B) SRC DST TP PP EP PR(fp32|bf16|fp16) USE_TE(true|false) mg2hf(true|false) [HG_CKPT_PATH]" >&2; exit 2; }
[ $# -ge 9 ] || usage
MODEL_SIZE=$1; SRC=$2; DST=$3; TP=$4; PP=$5; EP=$6; PR=$7; USE_TE=$8; MG2HF=$9; HG_CKPT_PATH=${10:-}
check MODEL_SIZE "$MODEL_SIZE" "tiny A2.4B A21B"
check PR "$PR" "fp32 bf16 fp16"
check USE_TE "$USE_TE" "true false"
check mg2hf "$MG2HF" "true false"
check_positive TP PP EP

if [ "$MG2HF" = true ]; then
  [ -n "$HG_CKPT_PATH" ] || die "mg2hf=true needs HG_CKPT_PATH (10th argument): the HF checkpoint for config and tokenizer"
  launch "$SRC" "$PYTHON" -m pai_patch convert mcore2hf --model deepseek_v2 --size "$MODEL_SIZE" --mcore "$SRC" --hf "$DST" \
    --source-hf "$HG_CKPT_PATH" --dtype "$PR"
fi
TE_FLAG=(); [ "$USE_TE" = true ] && TE_FLAG=(--use-te)
FORMAT=${FORMAT:-$(recipe_value deepseek_v2 convert.format size="$MODEL_SIZE")}
launch "$SRC" "$PYTHON" -m pai_patch convert hf2mcore --model deepseek_v2 --size "$MODEL_SIZE" --hf "$SRC" --mcore "$DST" \
  --tp "$TP" --pp "$PP" --ep "$EP" --dtype "$PR" --format "$FORMAT" "${TE_FLAG[@]}"
