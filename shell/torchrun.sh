# Sourced by train_multinode.sh and eval_dist.sh: the torchrun topology from slurm or from plain variables.
#
# Set before sourcing: DEFAULT_PORT (master port without slurm), CPU_PROCS (processes per node on a machine
# without GPUs). Then call `torchrun_module MODULE "$@"`: it drops --dry-run from the arguments and either prints
# the torchrun command (with --dry-run) or runs it with the remaining arguments passed to MODULE unchanged.
#
# Under slurm (SLURM_JOB_ID set; run once per node, e.g. `srun --ntasks-per-node=1 bash shell/<script> ...`):
#   NNODES, NODE_RANK and MASTER_ADDR come from SLURM_JOB_NUM_NODES, SLURM_NODEID and the first host of
#   SLURM_JOB_NODELIST (via scontrol); MASTER_PORT is DEFAULT_PORT-derived from the job id so that jobs on shared
#   nodes do not collide.
# Plain: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, NPROC_PER_NODE (defaults: 1 node, 127.0.0.1, DEFAULT_PORT,
#   one process per visible GPU or CPU_PROCS).
#
# Errors (docs/ERRORS.md): a rank that stops on a user error prints `error: rank R/W: <message>` and exits with 2;
# torchrun then reports the failed ranks and exits with 1, so this function checks VLMRET_ERROR_FILE, which such a
# rank writes, and exits with 2 as the python tools do. Any other failure keeps torchrun's exit status.

torchrun_module() {
  local module="$1" dry_run=0 arg
  shift
  local args=()
  for arg in "$@"; do
    if [ "$arg" = "--dry-run" ]; then dry_run=1; else args+=("$arg"); fi
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
    MASTER_PORT="${MASTER_PORT:-$((DEFAULT_PORT - 9500 + SLURM_JOB_ID % 20000))}"
  fi
  local python="${PYTHON:-python}"
  local nproc="${NPROC_PER_NODE:-}"
  if [ -z "$nproc" ]; then
    nproc="$("$python" -c "import torch; print(torch.cuda.device_count() or $CPU_PROCS)" 2>/dev/null || echo "$CPU_PROCS")"
  fi
  local cmd=("$python" -m torch.distributed.run
    --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$nproc"
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-$DEFAULT_PORT}"
    -m "$module" "${args[@]}")
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    return 0
  fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
  VLMRET_ERROR_FILE="$(mktemp)"
  export VLMRET_ERROR_FILE
  local status=0
  "${cmd[@]}" || status=$?
  if [ "$status" != 0 ] && [ -s "$VLMRET_ERROR_FILE" ]; then
    status=2
  fi
  rm -f "$VLMRET_ERROR_FILE"
  return "$status"
}
