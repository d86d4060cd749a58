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
# Checked before torchrun starts (one line `error: <script>: ...`, exit status 2): SLURM_JOB_ID, NNODES (or
# SLURM_JOB_NUM_NODES), NODE_RANK (or SLURM_NODEID) below NNODES, NPROC_PER_NODE, MASTER_PORT (1-65535).
#
# Errors (docs/ERRORS.md): a rank that stops on a user error prints `error: rank R/W: <message>` and exits with 2;
# torchrun then reports the failed ranks and exits with 1, so this function checks VLMRET_ERROR_FILE, which such a
# rank writes, and exits with 2 as the python tools do. Any other failure keeps torchrun's exit status.

# shellcheck source=shell/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

slurm_topology() {  # NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT of the slurm job SLURM_JOB_ID
  need_int SLURM_JOB_ID "$SLURM_JOB_ID" 0
  NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  NODE_RANK="${SLURM_NODEID:-0}"
  need_int SLURM_JOB_NUM_NODES "$NNODES" 1
  need_int SLURM_NODEID "$NODE_RANK" 0
  if [ -z "${MASTER_ADDR:-}" ]; then
    if command -v scontrol >/dev/null 2>&1 && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
      MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    else
      MASTER_ADDR="${SLURM_LAUNCH_NODE_IPADDR:-127.0.0.1}"
    fi
  fi
  MASTER_PORT="${MASTER_PORT:-$((DEFAULT_PORT - 9500 + SLURM_JOB_ID % 20000))}"
}

check_topology() {  # the numbers torchrun gets, each a one-line error when it is not one or is out of range
  need_int NNODES "$NNODES" 1
  need_int NODE_RANK "$NODE_RANK" 0
  if ((NODE_RANK >= NNODES)); then
    fail "NODE_RANK must be below NNODES ($NNODES), got $NODE_RANK"
  fi
  need_int NPROC_PER_NODE "$NPROC_PER_NODE" 1
  need_int MASTER_PORT "$MASTER_PORT" 1 65535
}

torchrun_module() {
  local module="$1" dry_run=0 arg
  shift
  local args=()
  for arg in "$@"; do
    if [ "$arg" = "--dry-run" ]; then dry_run=1; else args+=("$arg"); fi
  done
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    slurm_topology
  fi
  local python="${PYTHON:-python}"
  if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE="$("$python" -c "import torch; print(torch.cuda.device_count() or $CPU_PROCS)" 2>/dev/null ||
      echo "$CPU_PROCS")"
  fi
  NNODES="${NNODES:-1}" NODE_RANK="${NODE_RANK:-0}" MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  MASTER_PORT="${MASTER_PORT:-$DEFAULT_PORT}"
  check_topology
  local cmd=("$python" -m torch.distributed.run
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
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
