#!/usr/bin/env bash
. "$(dirname -- "$0")/../../toolkits/_common.sh"  # re-exec under bash (the seeds use sh), ROOT, PYTHON, die, launch
# Seed interface of Pai-Megatron-Patch's run_ds_train_huggingface_llama.sh (14 positional args),
# mapped onto `python -m pai_patch hf_train` (DeepSpeed ZeRO from ds_config_TEMPLATE.json next to this file).
#   ENV MODEL_SIZE BATCH_SIZE GA_STEPS LR SEQ_LEN PR ZERO GC TRAIN_DATASET_PATH VALID_DATASET_PATH
#   PRETRAIN_CHECKPOINT_PATH EPOCH OUTPUT_BASEPATH
# ENV=dsw: one node, one process per GPU (or one CPU process); ENV=dlc: run under the PAI-DLC torchrun
# environment (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT set by the platform).
# DRY_RUN=1 checks that PRETRAIN_CHECKPOINT_PATH exists and prints the command instead of running it.
if [ "$#" -ne 14 ]; then
  echo "usage: $0 ENV MODEL_SIZE BATCH_SIZE GA_STEPS LR SEQ_LEN PR ZERO GC TRAIN_DATASET_PATH" \
       "VALID_DATASET_PATH PRETRAIN_CHECKPOINT_PATH EPOCH OUTPUT_BASEPATH (got $# arguments)" >&2
  exit 2
fi
ENV=$1; MODEL_SIZE=$2; BATCH_SIZE=$3; GA_STEPS=$4; LR=$5; SEQ_LEN=$6; PR=$7; ZERO=$8; GC=$9
TRAIN_DATASET_PATH=${10}; VALID_DATASET_PATH=${11}; PRETRAIN_CHECKPOINT_PATH=${12}; EPOCH=${13}; OUTPUT_BASEPATH=${14}

case "$GC" in true) GC_FLAG=--gradient-checkpointing ;; false) GC_FLAG=--no-gradient-checkpointing ;;
  *) die "GC=$GC: expected true or false" ;; esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME="ds-hf-llama2-${MODEL_SIZE}-lr-${LR}-bs-${BATCH_SIZE}-ga-${GA_STEPS}-seqlen-${SEQ_LEN}-pr-${PR}-zero-${ZERO}-gc-${GC}"
ARGS=(--model "$PRETRAIN_CHECKPOINT_PATH" --train-data "$TRAIN_DATASET_PATH" --valid-data "$VALID_DATASET_PATH"
      --output "$OUTPUT_BASEPATH/checkpoint/$NAME" --zero "$ZERO" --micro-batch "$BATCH_SIZE" --grad-accum "$GA_STEPS"
      --lr "$LR" --seq-len "$SEQ_LEN" --precision "$PR" "$GC_FLAG" --epochs "$EPOCH" --ds-template "$HERE/ds_config_TEMPLATE.json")
case "$ENV" in
  dsw)
    NPROC=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
    launch "$PRETRAIN_CHECKPOINT_PATH" "$PYTHON" -m pai_patch hf_train "${ARGS[@]}" --nproc "$NPROC" ;;
  dlc)
    launch "$PRETRAIN_CHECKPOINT_PATH" "$PYTHON" -m torch.distributed.run --nnodes "${WORLD_SIZE:-1}" --node_rank "${RANK:-0}" \
      --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
      --nproc_per_node "$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")" \
      -m pai_patch hf_train "${ARGS[@]}" ;;
  *) die "ENV=$ENV: expected dsw or dlc" ;;
esac
