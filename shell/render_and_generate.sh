#!/usr/bin/env bash
# PDFs -> page store -> VLM-written queries -> filtered pairs -> leak-free train/test split, resumable at every stage.
#
#   bash shell/render_and_generate.sh --pdfs DIR --out DIR --model M [--backend vllm|transformers|openai]
#        [--gpus N] [--tp T] [--workers W] [--dry-run] [--queries_per_page N] [--max_new_tokens T]
#        [--batch_size B] [--dpi D] [--test_fraction F] [--generate_args "..."] [--filter_args "..."]
#
# Writes OUT/pages.jsonl, OUT/store, OUT/queries.jsonl (+ OUT/queries.failures.jsonl), OUT/pairs.jsonl,
# OUT/rejected.jsonl, OUT/train.jsonl, OUT/test.jsonl. A stage is skipped when its marker OUT/.done/<stage> exists,
# so re-running the same command after any interruption continues where it stopped (each stage also resumes
# inside itself). Generation runs one process per engine: --gpus N with --tp T gives N/T engines with T GPUs each,
# each on its shard of the pages (CUDA_VISIBLE_DEVICES set per engine).
#
# Slurm: when SLURM_ARRAY_TASK_ID (array job) or SLURM_PROCID with SLURM_NTASKS > 1 (srun tasks) is set, this
# process only generates its own shard (the array index / task id among the array size / task count) and exits;
# run the pages and render stages once before (--until render), and the same command once more without slurm
# afterwards to merge, filter and split. See docs/QUERIES.md.
#
# --generate_args / --filter_args: more flags for query_generation.generate / query_generation.filter, split on
# whitespace and passed literally (no globbing, no quotes).
#
# Errors (docs/ERRORS.md): a bad argument (a flag without its value, a number that is not one, a slurm variable
# out of range) or a stage run out of order prints `error: <message>` on stderr and exits with 2 before anything
# runs; a stage that stops on a user error has printed its own `error:` line, and the script exits with 2.
set -euo pipefail

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0; }
# shellcheck source=shell/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

PDFS="" OUT="" MODEL="" BACKEND="vllm" GPUS=1 TP=1 WORKERS=4 DRY=0 QPP=3 MAX_NEW=512 BATCH="" DPI=144
TEST_FRACTION=0.1 GENERATE_ARGS="" FILTER_ARGS="--rules" UNTIL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pdfs) flag_value PDFS "$@" ;;
    --out) flag_value OUT "$@" ;;
    --model) flag_value MODEL "$@" ;;
    --backend) flag_value BACKEND "$@" ;;
    --gpus) flag_value GPUS "$@" ;;
    --tp) flag_value TP "$@" ;;
    --workers) flag_value WORKERS "$@" ;;
    --queries_per_page) flag_value QPP "$@" ;;
    --max_new_tokens) flag_value MAX_NEW "$@" ;;
    --batch_size) flag_value BATCH "$@" ;;
    --dpi) flag_value DPI "$@" ;;
    --test_fraction) flag_value TEST_FRACTION "$@" ;;
    --generate_args) flag_words GENERATE_ARGS "$@" ;;
    --filter_args) flag_words FILTER_ARGS "$@" ;;
    --until) flag_value UNTIL "$@" ;;
    --dry-run) DRY=1; shift; continue ;;
    -h|--help) usage ;;
    *) fail "unknown argument '$1' (see --help)" ;;
  esac
  shift 2
done
if [ -z "$PDFS" ] || [ -z "$OUT" ] || [ -z "$MODEL" ]; then
  fail "--pdfs, --out and --model are required (see --help)"
fi
need_int --gpus "$GPUS" 1
need_int --tp "$TP" 1
need_int --workers "$WORKERS" 1
need_int --queries_per_page "$QPP" 1
need_int --max_new_tokens "$MAX_NEW" 1
[ -z "$BATCH" ] || need_int --batch_size "$BATCH" 1
need_number --dpi "$DPI"
need_fraction --test_fraction "$TEST_FRACTION"
if [ $((GPUS % TP)) -ne 0 ]; then
  fail "--gpus ($GPUS) must be a positive multiple of --tp ($TP)"
fi
case "$BACKEND" in
  vllm|transformers|openai) ;;
  *) fail "--backend must be vllm, transformers or openai, got '$BACKEND'" ;;
esac
case "$UNTIL" in
  ""|pages|render|generate|filter) ;;
  *) fail "--until must be pages, render, generate or filter, got '$UNTIL'" ;;
esac
ENGINES=$((GPUS / TP))
DONE="$OUT/.done"
split_words GEN_EXTRA "$GENERATE_ARGS"
split_words FILTER_EXTRA "$FILTER_ARGS"
[ -n "$BATCH" ] && GEN_EXTRA+=(--batch_size "$BATCH")
[ "$BACKEND" = "vllm" ] && GEN_EXTRA+=(--tensor_parallel_size "$TP")

is_done() { [ -f "$DONE/$1" ]; }
mark() { mkdir -p "$DONE"; touch "$DONE/$1"; }
show() { printf '   '; printf ' %q' "$@"; printf '\n'; }
# stage NAME CMD...: run CMD unless NAME is done (dry run: print the plan line and the command).
stage() {
  local name="$1"; shift
  if [ "$DRY" = 1 ]; then
    if is_done "$name"; then echo "[done] $name"; else echo "[todo] $name"; show "$@"; fi
    return 0
  fi
  if is_done "$name"; then echo "== $name: done before, skipped"; return 0; fi
  echo "== $name"
  "$@"
  mark "$name"
}
stop_after() { if [ "$UNTIL" = "$1" ]; then echo "stopped after $1 (--until)"; exit 0; fi; }

shard_file() { echo "$OUT/queries/shard-$(printf '%03d' "$1")-of-$(printf '%03d' "$2").jsonl"; }
generate_cmd() {  # generate_cmd INDEX COUNT: sets GEN_CMD, the command of one engine on its shard of the pages
  local out; out="$(shard_file "$1" "$2")"
  GEN_CMD=(python -m query_generation.generate --store "$OUT/store" --pages "$OUT/pages.jsonl" --out "$out"
    --failures "${out%.jsonl}.failures.jsonl" --backend "$BACKEND" --model "$MODEL" --queries_per_page "$QPP"
    --max_new_tokens "$MAX_NEW" --num_shards "$2" --shard_index "$1" "${GEN_EXTRA[@]}")
}
generate_shard() {  # generate_shard INDEX COUNT
  generate_cmd "$1" "$2"
  mkdir -p "$OUT/queries"
  "${GEN_CMD[@]}"
}
devices_of() {  # devices_of ENGINE: the comma-separated GPU ids of an engine
  local first=$(($1 * TP)) ids="" g
  for ((g = first; g < first + TP; g++)); do ids="${ids:+$ids,}$g"; done
  echo "$ids"
}
generate_all() {  # one background process per engine, each on its shard; 2 if every failed shard had a user error
  local pids=() i code status=0
  for ((i = 0; i < ENGINES; i++)); do
    CUDA_VISIBLE_DEVICES="$(devices_of "$i")" generate_shard "$i" "$ENGINES" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" && continue
    code=$?
    echo "generation shard $i of $ENGINES stopped (exit status $code); run the same command again to resume" >&2
    if [ "$code" = 2 ] && [ "$status" != 1 ]; then status=2; else status=1; fi
  done
  return "$status"
}
merge_shards() {  # shards in order: the same bytes as one unsharded run
  local files=() fails=() i
  for ((i = 0; i < ENGINES; i++)); do files+=("$(shard_file "$i" "$ENGINES")"); fails+=("${files[-1]%.jsonl}.failures.jsonl"); done
  cat "${files[@]}" > "$OUT/queries.jsonl.tmp" && mv "$OUT/queries.jsonl.tmp" "$OUT/queries.jsonl"
  cat "${fails[@]}" > "$OUT/queries.failures.jsonl.tmp" 2>/dev/null || true
  mv "$OUT/queries.failures.jsonl.tmp" "$OUT/queries.failures.jsonl"
  echo "merged $ENGINES shard(s): $(wc -l < "$OUT/queries.jsonl") queries, $(wc -l < "$OUT/queries.failures.jsonl") failed pages"
}
split_pairs() {
  if [ ! -s "$OUT/pairs.jsonl" ]; then
    : > "$OUT/train.jsonl"; : > "$OUT/test.jsonl"
    echo "no pairs survived the filter: train.jsonl and test.jsonl are empty (see $OUT/rejected.jsonl)"
    return 0
  fi
  python -m data_prep.build_splits --pairs "$OUT/pairs.jsonl" --train "$OUT/train.jsonl" --test "$OUT/test.jsonl" \
    --test_fraction "$TEST_FRACTION"
}

# Slurm task: this process generates one shard only.
TASK="" TASKS=""
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  [ -n "${SLURM_ARRAY_TASK_COUNT:-}" ] || die "slurm array task: SLURM_ARRAY_TASK_COUNT is not set"
  need_int SLURM_ARRAY_TASK_ID "$SLURM_ARRAY_TASK_ID" 0
  need_int SLURM_ARRAY_TASK_COUNT "$SLURM_ARRAY_TASK_COUNT" 1
  need_int SLURM_ARRAY_TASK_MIN "${SLURM_ARRAY_TASK_MIN:-0}" 0 "$SLURM_ARRAY_TASK_ID"
  need_int SLURM_ARRAY_TASK_STEP "${SLURM_ARRAY_TASK_STEP:-1}" 1
  TASK=$(((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}) / ${SLURM_ARRAY_TASK_STEP:-1}))
  TASKS="$SLURM_ARRAY_TASK_COUNT"
  need_int "the array task index (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP" "$TASK" 0 \
    $((TASKS - 1))
elif [ -n "${SLURM_PROCID:-}" ]; then
  need_int SLURM_NTASKS "${SLURM_NTASKS:-1}" 1
  if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
    need_int SLURM_PROCID "$SLURM_PROCID" 0 $((SLURM_NTASKS - 1))
    TASK="$SLURM_PROCID" TASKS="$SLURM_NTASKS"
  fi
fi
if [ -n "$TASK" ]; then
  is_done render || die "slurm task $TASK: the render stage is not done; run this script once with --until render first"
  ENGINES="$TASKS"
  stage "generate-shard-$TASK-of-$TASKS" generate_shard "$TASK" "$TASKS"
  echo "slurm task $TASK of $TASKS: shard done; run the command again outside slurm to merge, filter and split"
  exit 0
fi

[ "$DRY" = 1 ] && echo "plan (OUT=$OUT, backend $BACKEND, model $MODEL, $ENGINES engine(s) x $TP GPU(s)):"
stage pages python -m data_prep.split_pdfs --pdfs "$PDFS" --out "$OUT/pages.jsonl" --with_text
stop_after pages
stage render python -m data_prep.render --pages "$OUT/pages.jsonl" --out "$OUT/store" --workers "$WORKERS" \
  --dpi "$DPI"
stop_after render
if [ "$DRY" = 1 ]; then
  for ((i = 0; i < ENGINES; i++)); do
    echo "[$(is_done generate && echo done || echo todo)] generate shard $i of $ENGINES on GPU(s) $(devices_of "$i")"
    generate_cmd "$i" "$ENGINES"
    show "${GEN_CMD[@]}"
  done
else
  stage generate generate_all
fi
stop_after generate
stage merge merge_shards
stage filter python -m query_generation.filter --queries "$OUT/queries.jsonl" --out "$OUT/pairs.jsonl" \
  --rejected "$OUT/rejected.jsonl" "${FILTER_EXTRA[@]}"
stop_after filter
stage split split_pairs
[ "$DRY" = 1 ] || echo "done: $OUT/train.jsonl and $OUT/test.jsonl"
