#!/usr/bin/env bash
# The sft task on the demo model: King James verses as prompt/response pairs (reference ->
# verse). From the same demo checkpoint and for the same steps, it trains
#   sft  task.name: sft on the prompt/response store (prompts masked out of the loss,
#        documents packed with their boundaries)
#   lm   task.name: lm on the same pairs written as plain text documents ({"text": prompt +
#        response}: no loss mask, so every token is scored), data.packing: documents
# and evaluates all three models (before, sft, lm) on the validation pairs' response tokens,
# the quantity sft optimises. Also the ms/step of both runs, measured in the same session.
# Writes bench/results/cpu-sft-<date>.txt.
# usage: bench/run_sft_bench.sh [STEPS]   (needs `make demo`'s checkpoint; DEMO_STEPS=N trains
#        a shorter demo model first when there is none)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-200}
build=${BUILD_DIR:-build}
demo=$build/demo
out=$build/sft_bench
anvil=$build/bin/anvil
if [ ! -d "$demo/run/checkpoints" ]; then
  mkdir -p "$demo"
  [ -f "$demo/kjv.txt" ] || bible "gen1:1-rev22:21" > "$demo/kjv.txt"
  [ -f "$demo/tokenizer.json" ] || "$anvil" tokenizer train --input "$demo/kjv.txt" --vocab-size 4096 --output "$demo/tokenizer.json"
  [ -f "$demo/kjv.h5" ] || "$anvil" data prepare --input "$demo/kjv.txt" --tokenizer "$demo/tokenizer.json" --output "$demo/kjv.h5"
  "$anvil" train configs/demo.yaml --set training.steps="${DEMO_STEPS:-900}" --set training.sample_every=0 \
    --set logging.progress=never > "$demo/demo_train.log"
fi
python3 scripts/kjv_sft_data.py "$demo/kjv.txt" "$demo/kjv_sft.jsonl"
"$anvil" data prepare --input "$demo/kjv_sft.jsonl" --tokenizer "$demo/tokenizer.json" --output "$demo/kjv_sft.h5"
# The same pairs as whole documents: the lm peer scores the references too.
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(json.dumps({"text": r["prompt"] + r["response"]}))' "$demo/kjv_sft.jsonl" > "$demo/kjv_sft_text.jsonl"
"$anvil" data prepare --input "$demo/kjv_sft_text.jsonl" --tokenizer "$demo/tokenizer.json" --output "$demo/kjv_sft_text.h5"
rm -rf "$out"
mkdir -p "$out"
eval_sft() {  # validation loss over the response tokens of the sft store's validation pairs
  "$anvil" eval --checkpoint "$1" --batches 20 --set task.name=sft --set data.train="$demo/kjv_sft.h5" \
    --set data.valid_fraction=0.02 | sed -n 's/.*validation loss \([0-9.]*\).*/\1/p'
}
before=$(eval_sft "$demo/run")
common=(--set training.steps="$steps" --set training.eval_every=0 --set training.sample_every=0
        --set checkpoint.every=0 --set logging.progress=never --set schedule.warmup_steps=20)
"$anvil" train configs/sft_demo.yaml --set run.out_dir="$out/sft" "${common[@]}" > "$out/sft.log"
"$anvil" train configs/sft_demo.yaml --set run.out_dir="$out/lm" --set task.name=lm --set data.packing=documents \
  --set data.train="$demo/kjv_sft_text.h5" \
  "${common[@]}" > "$out/lm.log"
after_sft=$(eval_sft "$out/sft")
after_lm=$(eval_sft "$out/lm")
ms() { python3 -c "import json,sys; r=[json.loads(l)['ms'] for l in open(sys.argv[1]) if '\"ms\"' in l][5:]; print(f'{sum(r)/len(r):.1f}')" "$1"; }
ms_sft=$(ms "$out/sft/metrics.jsonl")
ms_lm=$(ms "$out/lm/metrics.jsonl")
date=$(date +%F)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
result=bench/results/cpu-sft-$date.txt
{
  echo "sft bench, $date, $cpu ($(nproc) cores), commit $(git rev-parse --short HEAD)"
  echo "demo model from $demo/run; $steps steps of 8 x 256 tokens from it, adamw lr 1e-3 (configs/sft_demo.yaml)"
  echo "validation: response tokens of the held-out 2% of King James verses (reference -> verse), 20 batches"
  echo
  printf '%-34s %14s %10s\n' "model" "response loss" "ms/step"
  printf '%-34s %14s %10s\n' "demo checkpoint (before)" "$before" "-"
  printf '%-34s %14s %10s\n' "task sft (prompts masked)" "$after_sft" "$ms_sft"
  printf '%-34s %14s %10s\n' "task lm (unmasked text, packed)" "$after_lm" "$ms_lm"
  echo
  echo "ms/step ratio sft / lm: $(awk -v a="$ms_sft" -v b="$ms_lm" 'BEGIN {printf "%.3f", a / b}') (same session, same machine)"
} | tee "$result"
