#!/usr/bin/env bash
. "$(dirname -- "$0")/../_common.sh"  # re-exec under bash, ROOT, PYTHON, die
# Seed interface of Pai-Megatron-Patch's run_text_generation_megatron_llama.sh (19 positional args),
# mapped onto `python -m pai_patch generate --mcore`.
#   ENV MEGATRON_PATH MEGATRON_PATCH_PATH CHECKPOINT_PATH MODEL_SIZE TP BS SEQ_LEN PAD_LEN EXTRA_VOCAB_SIZE PR
#   TOP_K INPUT_SEQ_LEN OUTPUT_SEQ_LEN INPUT_FILE OUTPUT_FILE TOP_P TEMPERATURE REPETITION_PENALTY
# MODEL_FAMILY (env, default llama2) picks the family; TOKENIZER (env) a tokenizer dir (default: shipped one).
if [ "$#" -ne 19 ]; then
  echo "usage: $0 ENV MEGATRON_PATH MEGATRON_PATCH_PATH CHECKPOINT_PATH MODEL_SIZE TP BS SEQ_LEN PAD_LEN" \
       "EXTRA_VOCAB_SIZE PR TOP_K INPUT_SEQ_LEN OUTPUT_SEQ_LEN INPUT_FILE OUTPUT_FILE TOP_P TEMPERATURE" \
       "REPETITION_PENALTY (got $# arguments)" >&2
  exit 2
fi
ENV=$1; MEGATRON_PATH=$2; MEGATRON_PATCH_PATH=$3; CHECKPOINT_PATH=$4; MODEL_SIZE=$5; TP=$6; BS=$7
SEQ_LEN=$8; PAD_LEN=$9; EXTRA_VOCAB_SIZE=${10}; PR=${11}; TOP_K=${12}; INPUT_SEQ_LEN=${13}
OUTPUT_SEQ_LEN=${14}; INPUT_FILE=${15}; OUTPUT_FILE=${16}; TOP_P=${17}; TEMPERATURE=${18}; REPETITION_PENALTY=${19}

echo "note: MEGATRON_PATH ($MEGATRON_PATH) and MEGATRON_PATCH_PATH ($MEGATRON_PATCH_PATH) are ignored:" \
     "megatron-core and pai_patch come from the installed environment" >&2
echo "note: ENV=$ENV BS=$BS SEQ_LEN=$SEQ_LEN PAD_LEN=$PAD_LEN EXTRA_VOCAB_SIZE=$EXTRA_VOCAB_SIZE are not needed" \
     "(prompts run one at a time; the vocabulary comes from the model size)" >&2
case "$ENV" in dsw|dlc) ;; *) die "ENV=$ENV: expected dsw or dlc" ;; esac

ARGS=(--mcore "$CHECKPOINT_PATH" --family "${MODEL_FAMILY:-llama2}" --size "$MODEL_SIZE" --tp "$TP"
      --precision "$PR" --top-k "$TOP_K" --top-p "$TOP_P" --temperature "$TEMPERATURE"
      --repetition-penalty "$REPETITION_PENALTY" --max-prompt-tokens "$INPUT_SEQ_LEN"
      --max-new-tokens "$OUTPUT_SEQ_LEN" --input "$INPUT_FILE" --output "$OUTPUT_FILE")
[ -n "${TOKENIZER:-}" ] && ARGS+=(--tokenizer "$TOKENIZER")
launch "$CHECKPOINT_PATH" "$PYTHON" -m pai_patch generate "${ARGS[@]}"
