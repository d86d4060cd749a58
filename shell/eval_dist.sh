#!/usr/bin/env bash
# Run an evaluator under torchrun on one or several nodes: each rank encodes a shard of corpus and queries,
# top-k lists are merged across ranks (see eval/engine.py).
#
# EVAL_MODULE picks the evaluator: eval.retrieval (default) or eval.image_text. All arguments except --dry-run go
# to it unchanged; --dry-run prints the torchrun command instead of running it. The topology comes from slurm or
# from plain variables (see shell/torchrun.sh). Defaults: port 29501, 2 processes on a CPU-only node.
#
#   bash shell/eval_dist.sh --model ckpt --tasks vidore_v1 --out results/vidore_v1
#   EVAL_MODULE=eval.image_text NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash shell/eval_dist.sh \
#       --model ckpt --karpathy_json dataset_flickr30k.json --image_root flickr30k-images --out f30k.json
set -euo pipefail
# shellcheck source=shell/torchrun.sh
source "$(dirname "${BASH_SOURCE[0]}")/torchrun.sh"
EVAL_MODULE="${EVAL_MODULE:-eval.retrieval}"
case "$EVAL_MODULE" in
  eval.retrieval|eval.image_text) ;;
  *) fail "EVAL_MODULE must be eval.retrieval or eval.image_text, got '$EVAL_MODULE'" ;;
esac
DEFAULT_PORT=29501 CPU_PROCS=2 torchrun_module "$EVAL_MODULE" "$@"
