#!/usr/bin/env bash
# Medusa on the CPU (issue 15): Medusa-1 with K = 3 and K = 5 heads and Medusa-2 (self-distilled,
# K = 3) trained by configs/medusa-*.yaml on one target, each with a tree built from its heads'
# measured accuracy (`anvil eval medusa --build-tree`), then `anvil eval medusa` against plain
# KV-cached decoding of the same base in the same run at T = 0 (greedy) and T = 1 (typical and
# lossless acceptance), repeated RUNS times with different seeds; medians. Beside them, the
# speculative issue's standalone and EAGLE drafters distilled from the same target
# (`anvil eval spec`, gamma 4), for a table of tau, speedup, training time and trainable params.
# The backbone's validation loss before and after Medusa-2 (`anvil eval`, the corpus's held-out split).
# The target: TARGET (default build/bench/spec_target, ~38M params: `anvil train
# bench/configs/spec_target.yaml`, an hour on 2 cores); TARGET=build/demo/run for a quick look.
# usage: [DRAFTERS=0] bench/run_medusa_bench.sh [STEPS=300] [RUNS=5]     results: bench/results/cpu-medusa-<date>.txt
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
runs=${2:-5}
build=${BUILD_DIR:-build}
anvil=$(realpath "$build/bin/anvil")
target=${TARGET:-$build/bench/spec_target}
out=${OUT:-$build/medusa_bench}
corpus=$(realpath "$build/demo/kjv.h5")
threads=${THREADS:-$(nproc)}
tree_nodes=${TREE_NODES:-32}  # the most nodes --for-speed considers
export OMP_NUM_THREADS=$threads
if [ ! -d "$target/checkpoints" ]; then
  echo "no target checkpoint under $target — train it first: $anvil train bench/configs/spec_target.yaml" \
       "(resumes where it stopped), or run with TARGET=build/demo/run" >&2
  exit 1
fi
target=$(realpath "$target")
mkdir -p "$out"
out=$(realpath "$out")
common=(--set training.steps="$steps" --set training.eval_every=$((steps / 2)) --set schedule.warmup_steps=$((steps / 10))
        --set training.sample_every=0 --set checkpoint.every=0 --set checkpoint.resume=none
        --set logging.progress=never)
models=()
train() {  # name config [--set ...]: trained once per OUT directory; wall time in name.seconds
  local name=$1 config=$2
  shift 2
  [ -f "$out/$name.done" ] && return
  local t0
  t0=$(date +%s)
  "$anvil" train "$config" --set run.out_dir="$out/$name" "${common[@]}" "$@" > "$out/$name.log"
  echo $(($(date +%s) - t0)) > "$out/$name.seconds"
  touch "$out/$name.done"
}
medusa=(--set model.init_from="$target")
train medusa1_k3 configs/medusa-1.yaml "${medusa[@]}" --set medusa.num_heads=3
models+=(medusa1_k3)
train medusa1_k5 configs/medusa-1.yaml "${medusa[@]}" --set medusa.num_heads=5
models+=(medusa1_k5)
# Medusa-2 self-distils on the target's own continuations of corpus prompts.
[ -f "$out/self.h5" ] || "$anvil" data generate --checkpoint "$target" --input "$corpus" --output "$out/self.h5" \
  --documents "${SELF_DOCUMENTS:-1000}" --prompt-tokens 32 --max-tokens 224 --temperature 1 --seed 1 > "$out/self.log"
train medusa2_k3 configs/medusa-2.yaml "${medusa[@]}" --set data.train="$out/self.h5" \
  --set medusa.warmup_steps=$((steps / 4))
models+=(medusa2_k3)
# The speculative issue's drafters on the same target (distill.target), for the comparison.
# DRAFTERS=0 leaves them out (e.g. when bench/run_spec_bench.sh measured them on this target already).
drafters=()
if [ "${DRAFTERS:-1}" != 0 ]; then
  train standalone configs/distill-standalone.yaml --set distill.target="$target"
  drafters+=(standalone)
  train eagle configs/distill-eagle.yaml --set distill.target="$target"
  drafters+=(eagle)
fi

rm -f "$out"/eval_*.json
for m in "${models[@]}"; do
  "$anvil" eval medusa --medusa "$out/$m" --build-tree "$tree_nodes" --for-speed --num-prompts 32 --prompt-tokens 32 \
    --max-tokens 64 --output "$out/$m.tree" > "$out/$m.tree.log"
  for r in $(seq "$runs"); do
    for mode in typical lossless; do  # T = 0 is greedy either way: measured with the first
      temps=(1)
      [ "$mode" = typical ] && temps=(0 1)
      "$anvil" eval medusa --medusa "$out/$m" --tree "$out/$m.tree" --medusa-mode "$mode" --num-prompts 8 \
        --prompt-tokens 32 --max-tokens 64 --temperatures "${temps[@]}" --seed "$r" \
        --json "$out/eval_${m}_${mode}_$r.json" > "$out/eval_${m}_${mode}_$r.log"
    done
  done
done
for d in "${drafters[@]}"; do
  for r in $(seq "$runs"); do
    "$anvil" eval spec --target "$target" --draft "$out/$d" --num-prompts 8 --prompt-tokens 32 --max-tokens 64 \
      --gammas 4 --temperatures 0 1 --seed "$r" --json "$out/spec_${d}_$r.json" > "$out/spec_${d}_$r.log"
  done
done
# The backbone's loss on the corpus's held-out split, before (the target) and after Medusa-2.
backbone_loss() { "$anvil" eval --checkpoint "$1" --batches 20 --set data.train="$corpus" --set run.seed=1 \
                  --set data.valid_fraction=0.02 | sed -n 's/.*validation loss \([0-9.]*\).*/\1/p'; }
echo "{\"before\": $(backbone_loss "$target"), \"after\": $(backbone_loss "$out/medusa2_k3")}" > "$out/backbone.json"

date=$(date +%F)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
result=bench/results/cpu-medusa-$date${SUFFIX:-}.txt
{
  echo "Medusa bench, $date, $cpu ($(nproc) cores, $threads threads), commit $(git rev-parse --short HEAD)"
  echo "target $target: $(grep -E '^ +(type|hidden_size|num_hidden_layers|intermediate_size):' "$target/config.yaml" |
                          tr -s ' ' | paste -sd ',')"
  echo "training: $steps steps each; trees of at most $tree_nodes nodes built from each model's measured head accuracy, sized to this machine (--for-speed)"
  echo "eval: 8 held-out prompts of 32 tokens, 64 new tokens, batch 1; medians of $runs runs"
  echo
  python3 bench/medusa_summary.py "$out" "${models[@]}" -- "${drafters[@]}"
} | tee "$result"
echo "wrote $result"
