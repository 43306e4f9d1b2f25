#!/usr/bin/env bash
# QLoRA against LoRA and full fine-tuning (issue 17's bench), and the quantized kernels.
#   1. Fine-tunes the ~38M KJV target (build/bench/spec_target: bench/run_spec_bench.sh trains it)
#      on King James verses as prompt/response pairs (task.name: sft), three ways from the same
#      checkpoint for the same steps: full fine-tuning in f32, LoRA on the f32 base, QLoRA (the base
#      NF4 with double quantization), each for every seed. Reports per way: peak memory (the
#      trainer's measured per-category peaks and the process's max RSS), tokens/s, final validation
#      loss on the held-out pairs' responses (mean and spread over seeds).
#   2. The size table of the base's Linear weights (f32 vs NF4+dq vs INT4) and KV-cached batch-1
#      decode of the target as f32, NF4+dq and INT4 g128 in one process (build/bin/quant_decode_bench).
#   3. The GEMV kernels against OpenBLAS sgemv (build/bin/quant_gemv_bench).
# Writes bench/results/cpu-qlora-<date>.txt.
# usage: bench/run_qlora_bench.sh [STEPS 60] [SEEDS "1 2 3"]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60}
seeds=${2:-"1 2 3"}
build=${BUILD_DIR:-build}
demo=$build/demo
target=$build/bench/spec_target
out=$build/qlora_bench
anvil=$build/bin/anvil
[ -d "$target/checkpoints" ] || { echo "run_qlora_bench: no target in $target — train it with \`$anvil train bench/configs/spec_target.yaml\` (see bench/run_spec_bench.sh)" >&2; exit 1; }
[ -f "$demo/kjv.txt" ] || { echo "run_qlora_bench: no $demo/kjv.txt — run \`make demo\` first" >&2; exit 1; }
python3 scripts/kjv_sft_data.py "$demo/kjv.txt" "$demo/kjv_sft.jsonl"
[ -f "$demo/kjv_sft.h5" ] || "$anvil" data prepare --input "$demo/kjv_sft.jsonl" --tokenizer "$demo/tokenizer.json" --output "$demo/kjv_sft.h5"
rm -rf "$out"
mkdir -p "$out"
for seed in $seeds; do
  for way in full lora qlora; do
    case $way in
      full) extra=(--set lora.modules=[] --set optimizer.lr=5.0e-5) ;;
      lora) extra=() ;;
      qlora) extra=(--set quant.scheme=nf4) ;;
    esac
    dir=$out/$way-$seed
    /usr/bin/time -f "max_rss_kb %M" "$anvil" train bench/configs/qlora_bench.yaml --set run.out_dir="$dir" \
      --set run.seed="$seed" --set training.steps="$steps" --set training.eval_every="$steps" "${extra[@]}" > "$out/$way-$seed.log" 2>&1
  done
done
"$build/bin/quant_decode_bench" "$target" 32 64 5 128 > "$out/decode.txt"
"$build/bin/quant_gemv_bench" > "$out/gemv.txt" 2>&1 || echo "(quant_gemv_bench failed)" > "$out/gemv.txt"
date=$(date +%F)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
result=bench/results/cpu-qlora-$date.txt
{
  echo "QLoRA bench, $date, $cpu ($(nproc) cores), commit $(git rev-parse --short HEAD)"
  echo "base: $target (~38M Llama, KJV); data: King James verses as prompt/response pairs (task sft), held-out 2%"
  echo "$steps steps of 4 x 256 tokens (bench/configs/qlora_bench.yaml), seeds: $seeds"
  echo "full: every weight trains, lr 5e-5 | lora: r 64 alpha 16 all-linear on the f32 base, lr 2e-4 | qlora: the same on NF4+double-quant"
  echo
  python3 bench/qlora_summary.py "$out" $seeds
  echo
  echo "## decode, batch 1, KV cache (build/bin/quant_decode_bench $target 32 64 5 128)"
  cat "$out/decode.txt"
  echo
  echo "## GEMV (build/bin/quant_gemv_bench)"
  cat "$out/gemv.txt"
} | tee "$result"
