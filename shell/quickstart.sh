#!/usr/bin/env bash
# The whole pipeline on the embedded default, on CPU, offline, in a few minutes:
#   the learnable corpus (PDFs whose pages carry a title of 3 words from a vocabulary of 16, in large type, among
#   small text and figures) -> pages.jsonl -> HDF5 page store -> text-layer queries (the title) -> leak-free
#   train/test split -> tiny random-weight Qwen2-VL -> baseline evaluation (chance) -> training with GradCache
#   -> hard-negative mining -> evaluation of the trained model on the 100 held-out queries (from chance to about
#   0.95 nDCG@10). A demonstration of VLM-written queries runs on a few report pages beside it.
# Everything is written to $QUICKSTART_OUT (default: quickstart_out/), which is emptied first; it must be missing,
# empty or the output of an earlier quickstart (which leaves a .quickstart marker in it), so that a mistyped path
# is never deleted. MODEL=/path/to/checkpoint uses a real checkpoint directory instead of the tiny model (then
# prefer a GPU); GEN_MODEL=... writes the VLM queries of step 5b with another model (default: MODEL, or the tiny
# Qwen2-VL when MODEL is an encoder). The script takes no arguments.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=shell/checks.sh
source shell/checks.sh
[ $# -eq 0 ] || fail "takes no arguments, got '$1' (set MODEL or QUICKSTART_OUT in the environment instead)"
OUT="${QUICKSTART_OUT:-$ROOT/quickstart_out}"
if [ -e "$OUT" ] && [ ! -e "$OUT/.quickstart" ] && [ -n "$(ls -A "$OUT" 2>&1)" ]; then
  fail "QUICKSTART_OUT $OUT is not empty and not an earlier quickstart output (no .quickstart marker)," \
    "and it would be deleted: choose another folder"
fi
# shellcheck source=shell/venv.sh
source shell/venv.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$OUT/.quickstart"
step() { printf '\n== %s\n' "$*"; }

step "1/9 sample PDFs: the learnable corpus (100 documents of 4 pages), and 2 reports for the VLM demonstration"
python -m data_prep.sample_pdfs --kind titles --out "$OUT/pdfs" --docs 100 --pages 4 --vocabulary 16 --title_words 3
python -m data_prep.sample_pdfs --kind reports --out "$OUT/reports" --docs 2 --pages 2

step "2/9 list pages (with their text layer)"
python -m data_prep.split_pdfs --pdfs "$OUT/pdfs" --out "$OUT/pages.jsonl" --with_text

step "3/9 render pages into an HDF5 page store"
python -m data_prep.render --pages "$OUT/pages.jsonl" --out "$OUT/store" --dpi 36 --workers 2
python -m data_prep.inspect "$OUT/store"

step "4/9 queries from each page's text layer (its 3-word title), then a train/test split sharing no document"
python -m query_generation.from_text --pages "$OUT/pages.jsonl" --out "$OUT/pairs.jsonl" --min_words 3 --max_words 3
python -m data_prep.build_splits --pairs "$OUT/pairs.jsonl" --train "$OUT/train.jsonl" --test "$OUT/test.jsonl" \
  --test_fraction 0.25

MODEL="${MODEL:-}"
if [ -z "$MODEL" ]; then
  step "5/9 tiny random-weight Qwen2-VL checkpoint (the embedded default)"
  MODEL="$OUT/tiny-qwen2-vl"
  python -m retriever.tiny --arch qwen2_vl --out "$MODEL"
else
  step "5/9 using MODEL=$MODEL"
fi

step "5b/9 VLM-written queries: shell/render_and_generate.sh (PDFs -> store -> queries -> filter -> split)"
GEN_MODEL="${GEN_MODEL:-$MODEL}"
if ! python -c "import sys; from transformers import AutoConfig; from retriever.model.backbones import \
chat_model_types; sys.exit(AutoConfig.from_pretrained(sys.argv[1]).model_type not in chat_model_types())" \
  "$GEN_MODEL" 2>/dev/null; then
  printf '%s does not generate text (an encoder such as ModernVBERT): the tiny Qwen2-VL writes the queries\n' \
    "$GEN_MODEL"
  GEN_MODEL="$OUT/tiny-qwen2-vl"
  [ -d "$GEN_MODEL" ] || python -m retriever.tiny --arch qwen2_vl --out "$GEN_MODEL"
fi
bash shell/render_and_generate.sh --pdfs "$OUT/reports" --out "$OUT/vlm" --model "$GEN_MODEL" --backend transformers \
  --workers 2 --dpi 72 --queries_per_page 2 --max_new_tokens 24 --batch_size 8
printf 'The tiny generator has random weights: it writes noise, so its pages land in vlm/queries.failures.jsonl\n'
printf '(with the raw answers) and training below stays on the text-layer pairs of step 4. With a real VLM\n'
printf '(--model Qwen/Qwen2.5-VL-7B-Instruct --backend vllm --gpus 8) the same command writes real pairs.\n'

step "6/9 evaluate the untrained model on the held-out split (baseline; corpus: every page of the store)"
python -m eval.retrieval --model "$MODEL" --tasks "$OUT/test.jsonl" --page_store "$OUT/store" \
  --out "$OUT/eval_untrained" --k 1,5,10

step "7/9 train: full fine-tuning, dense head (mean pooling), batches of 32 in GradCache chunks of 8, 240 steps"
python -m retriever.train --model_name_or_path "$MODEL" --output_dir "$OUT/run" \
  --train_data "$OUT/train.jsonl" --page_store "$OUT/store" --head dense --pooling mean --temperature 0.05 \
  --per_device_train_batch_size 32 --gc_chunk_size 8 --training_mode full --learning_rate 3e-3 \
  --max_steps 240 --warmup_steps 10 --save_steps 80 --seed 0

step "8/9 mine hard negatives with the trained model"
python -m retriever.mine --model "$OUT/run/final" --train_data "$OUT/train.jsonl" --page_store "$OUT/store" \
  --out "$OUT/train_mined.jsonl" --num_negatives 2 --range_min 1

step "9/9 evaluate the trained model on the held-out split (corpus: every page of the store)"
python -m eval.retrieval --model "$OUT/run/final" --tasks "$OUT/test.jsonl" --page_store "$OUT/store" \
  --out "$OUT/eval" --k 1,5,10

printf '\nOutputs in %s: store/, train.jsonl, test.jsonl, run/ (checkpoints, log.jsonl, loss.png, final/), ' "$OUT"
printf 'train_mined.jsonl, eval_untrained/ and eval/ (metrics.json, run.trec, results.md).\n'
printf 'Compare the two tables: the untrained model ranks the 100 held-out titles at chance; after 240 steps it\n'
printf 'reads them (held-out pages combine the vocabulary in sets never seen in training). With a real checkpoint\n'
printf '(MODEL=...) and real data (shell/render_and_generate.sh) the same commands train a real retriever.\n'
