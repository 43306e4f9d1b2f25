#!/usr/bin/env bash
# CPU training throughput: anvil vs PyTorch (fp32, AdamW, same shapes and thread
# count), run back to back so both see the same machine load. Prints the ratio.
# usage: bench/run_train_bench.sh [BUILD_DIR]   (env THREADS=2, STEPS=10)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${THREADS:-2}
steps=${STEPS:-10}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
run() {  # family hidden layers heads kv_heads vocab seq batch
  local a; a=$("$build/bin/train_throughput" --family "$1" --hidden "$2" --layers "$3" --heads "$4" \
      --kv-heads "$5" --vocab "$6" --seq "$7" --batch "$8" --steps "$steps")
  local t; t=$(/usr/bin/python3 bench/torch_train.py "$@" "$steps" "$threads")
  echo "$a"; echo "$t"
  local at tt
  at=$(echo "$a" | awk '/tokens\/s/ {print $3}')
  tt=$(echo "$t" | awk '/tokens\/s/ {print $3}')
  awk -v a="$at" -v t="$tt" -v f="$1" 'BEGIN {printf "%s: anvil/torch tokens/s ratio %.2f\n\n", f, a / t}'
}
run gpt2 256 4 4 4 4096 256 8
run llama 256 4 4 2 4096 256 8
