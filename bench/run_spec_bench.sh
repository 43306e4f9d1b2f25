#!/usr/bin/env bash
# Speculative decoding on the CPU (issue 14): drafters of each kind distilled from one frozen
# target, then `anvil eval spec` against plain KV-cached decoding of the same target in the same
# run (same prompts, same threads), repeated RUNS times with different seeds; medians in
# bench/results/cpu-spec-<date>.txt. Drafters:
#   standalone_t1   configs/distill-standalone.yaml: forward KL at T = 1 (the decoding temperature)
#   standalone_t03  the same at T = 0.3: KD at a temperature other than T = 1 decoding (TempSpec's
#                   mismatch), for the tau(T=1)/tau(T=0) comparison
#   standalone_onpolicy  the same as standalone_t1 with distill.on_policy 0.5: half the micro-batches
#                   continue from the drafter's own samples (DistillSpec), against standalone_t1 off-policy
#   parallelspec    configs/distill-parallelspec.yaml (k = 5 masks: gamma <= 6)
#   eagle           configs/distill-eagle.yaml, when it exists
# and standalone_t1 again with a tree of candidates (standalone_t1_tree2).
# Also anvil's plain greedy decoding against transformers' generate() on the exported target.
# The target: TARGET (default build/bench/spec_target, ~38M params: `anvil train
# bench/configs/spec_target.yaml`, hours on 2 cores, resumable); TARGET=build/demo/run for a quick look.
# usage: bench/run_spec_bench.sh [DRAFT_STEPS=600] [RUNS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-600}
runs=${2:-5}
build=${BUILD_DIR:-build}
anvil=$(realpath "$build/bin/anvil")
target=${TARGET:-$build/bench/spec_target}
out=${OUT:-$build/spec_bench}
threads=${THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads
if [ ! -d "$target/checkpoints" ]; then
  echo "no target checkpoint under $target — train it first: $anvil train bench/configs/spec_target.yaml" \
       "(resumes where it stopped), or run with TARGET=build/demo/run" >&2
  exit 1
fi
target=$(realpath "$target")
mkdir -p "$out"
out=$(realpath "$out")
common=(--set distill.target="$target" --set training.steps="$steps" --set training.eval_every=$((steps / 4))
        --set schedule.warmup_steps=$((steps / 10))
        --set training.sample_every=0 --set checkpoint.every=0 --set checkpoint.resume=none
        --set logging.progress=never)
drafters=()
train_drafter() {  # name config [--set ...]: trained once per OUT directory
  local name=$1 config=$2
  shift 2
  drafters+=("$name")
  [ -f "$out/$name.done" ] && return
  "$anvil" train "$config" --set run.out_dir="$out/$name" "${common[@]}" "$@" > "$out/$name.log"
  touch "$out/$name.done"
}
train_drafter standalone_t1 configs/distill-standalone.yaml
train_drafter standalone_t03 configs/distill-standalone.yaml --set distill.temperature=0.3
train_drafter standalone_onpolicy configs/distill-standalone.yaml --set distill.on_policy=0.5
train_drafter parallelspec configs/distill-parallelspec.yaml
[ -f configs/distill-eagle.yaml ] && train_drafter eagle configs/distill-eagle.yaml
rm -f "$out"/eval_*.json
for d in "${drafters[@]}"; do
  gammas=(2 4 6)
  for r in $(seq "$runs"); do
    "$anvil" eval spec --target "$target" --draft "$out/$d" --num-prompts 8 --prompt-tokens 32 --max-tokens 64 \
      --gammas "${gammas[@]}" --temperatures 0 1 --seed "$r" --json "$out/eval_${d}_$r.json" > "$out/eval_${d}_$r.log"
  done
done
# A tree of candidates (width 2, depth 4: 30 nodes per target call) from the temperature-matched
# standalone drafter, against the chains above.
for r in $(seq "$runs"); do
  "$anvil" eval spec --target "$target" --draft "$out/standalone_t1" --num-prompts 8 --prompt-tokens 32 --max-tokens 64 \
    --gammas 4 --tree-width 2 --temperatures 0 1 --seed "$r" --json "$out/eval_standalone_t1_tree2_$r.json" \
    > "$out/eval_standalone_t1_tree2_$r.log"
done
# transformers' plain greedy decoding of the same target on the same prompts and threads.
pydeps=${ANVIL_PYDEPS:-$HOME/.cache/anvil-pydeps}
rm -rf "$out/target_hf"
"$anvil" convert --from "$target" --to hf "$out/target_hf" > /dev/null
python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["prompt_ids"]))' \
  "$out/eval_standalone_t1_1.json" > "$out/prompts.json"
PYTHONPATH="$pydeps" /usr/bin/python3 bench/hf_decode_baseline.py "$out/target_hf" "$out/prompts.json" 64 "$threads" \
  "$runs" > "$out/hf_baseline.json"
date=$(date +%F)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
result=bench/results/cpu-spec-$date.txt
last_val() { python3 -c 'import json, sys
v = [json.loads(l) for l in open(sys.argv[1]) if "val_loss" in l][-1]
print(" ".join(f"{k} {x:.4f}" for k, x in v.items() if k != "step"))' "$1/metrics.jsonl"; }
{
  echo "speculative-decoding bench, $date, $cpu ($(nproc) cores, $threads threads), commit $(git rev-parse --short HEAD)"
  echo "target $target: $(grep -E '^ +(type|hidden_size|num_hidden_layers|intermediate_size):' "$target/config.yaml" |
                          tr -s ' ' | paste -sd ',')"
  echo "target validation: $(last_val "$target")"
  for d in "${drafters[@]}"; do echo "drafter $d ($steps steps): $(last_val "$out/$d")"; done
  echo "eval: 8 held-out prompts of 32 tokens (the target's validation documents), 64 new tokens, batch 1"
  echo
  python3 bench/spec_summary.py "$out"
} | tee "$result"
echo "wrote $result"
