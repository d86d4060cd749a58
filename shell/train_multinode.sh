#!/usr/bin/env bash
# Launch `python -m retriever.train` with torchrun on one or several nodes (slurm or plain variables; see
# shell/torchrun.sh for how the topology is derived). Every argument except --dry-run goes to retriever.train
# unchanged; --dry-run prints the torchrun command instead. Defaults: port 29500, 1 process on a CPU-only node.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash shell/train_multinode.sh --model_name_or_path M --output_dir out \
#       --train_data pairs.jsonl --page_store pages/ --deepspeed ds_configs/zero2.json --gc_chunk_size 32
set -euo pipefail
# shellcheck source=shell/torchrun.sh
source "$(dirname "${BASH_SOURCE[0]}")/torchrun.sh"
DEFAULT_PORT=29500 CPU_PROCS=1 torchrun_module retriever.train "$@"
