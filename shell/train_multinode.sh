#!/usr/bin/env bash
# Launch `python -m retriever.train` with torchrun on one or several nodes.
#
# Under slurm (SLURM_JOB_ID set; run it once per node, e.g. `srun --ntasks-per-node=1 bash shell/train_multinode.sh ...`):
#   nodes, node rank and master address come from SLURM_JOB_NUM_NODES / SLURM_NODEID / SLURM_JOB_NODELIST.
# Plain (no slurm): set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, NPROC_PER_NODE (defaults: 1 node, this host,
#   port 29500, one process per visible GPU or 1 on a CPU machine).
# Every argument except --dry-run goes to retriever.train unchanged; --dry-run prints the torchrun command instead.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash shell/train_multinode.sh --model_name_or_path M --output_dir out \
#       --train_data pairs.jsonl --page_store pages/ --deepspeed ds_configs/zero2.json --gc_chunk_size 32
set -euo pipefail

DRY_RUN=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then DRY_RUN=1; else ARGS+=("$arg"); fi
done

if [ -n "${SLURM_JOB_ID:-}" ]; then
  NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  NODE_RANK="${SLURM_NODEID:-0}"
  if [ -z "${MASTER_ADDR:-}" ]; then
    if command -v scontrol >/dev/null 2>&1 && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
      MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    else
      MASTER_ADDR="${SLURM_LAUNCH_NODE_IPADDR:-127.0.0.1}"
    fi
  fi
  MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID} % 20000))}"
fi

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE="$(python -c 'import torch; print(max(1, torch.cuda.device_count()))' 2>/dev/null || echo 1)"
fi
PYTHON="${PYTHON:-python}"

CMD=("$PYTHON" -m torch.distributed.run
  --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
  -m retriever.train "${ARGS[@]}")

if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${CMD[@]}"
  printf '\n'
  exit 0
fi
exec "${CMD[@]}"
