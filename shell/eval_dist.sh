#!/usr/bin/env bash
# Run an evaluator under torchrun on one or several nodes: each rank encodes a shard of corpus and queries,
# top-k lists are merged across ranks (see eval/engine.py).
#
# EVAL_MODULE picks the evaluator: eval.retrieval (default) or eval.image_text. All arguments except --dry-run go
# to it unchanged; --dry-run prints the torchrun command instead of running it.
# Under slurm (SLURM_JOB_ID set; run once per node, e.g. `srun --ntasks-per-node=1 bash shell/eval_dist.sh ...`)
#   nodes, node rank and master address come from SLURM_JOB_NUM_NODES / SLURM_NODEID / SLURM_JOB_NODELIST.
# Plain: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, NPROC_PER_NODE (defaults: 1 node, this host, port 29501,
#   one process per visible GPU or 2 on a CPU machine).
#
#   bash shell/eval_dist.sh --model ckpt --tasks vidore_v1 --out results/vidore_v1
#   EVAL_MODULE=eval.image_text NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash shell/eval_dist.sh \
#       --model ckpt --karpathy_json dataset_flickr30k.json --image_root flickr30k-images --out f30k.json
set -euo pipefail

DRY_RUN=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then DRY_RUN=1; else ARGS+=("$arg"); fi
done

if [ -n "${SLURM_JOB_ID:-}" ]; then
  NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  NODE_RANK="${SLURM_NODEID:-0}"
  if [ -z "${MASTER_ADDR:-}" ] && command -v scontrol >/dev/null 2>&1 && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  fi
  MASTER_PORT="${MASTER_PORT:-$((20001 + ${SLURM_JOB_ID} % 20000))}"
fi

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29501}"
PYTHON="${PYTHON:-python}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 2)' 2>/dev/null || echo 2)"
fi
EVAL_MODULE="${EVAL_MODULE:-eval.retrieval}"
case "$EVAL_MODULE" in
  eval.retrieval|eval.image_text) ;;
  *) echo "EVAL_MODULE must be eval.retrieval or eval.image_text, got '$EVAL_MODULE'" >&2; exit 2 ;;
esac

CMD=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m "$EVAL_MODULE" "${ARGS[@]}")
if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
else
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
  exec "${CMD[@]}"
fi
