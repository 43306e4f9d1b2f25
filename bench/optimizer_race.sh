#!/usr/bin/env bash
# Convergence race on the demo corpus and model: AdamW, Muon, SOAP and COSMOS, each
# at its default learning rate and half/double it, for the same number of tokens.
# Prints final validation loss, ms/step and optimizer-state memory per run, and
# writes bench/results/optimizer_race.png (validation curves of each one's best lr).
# usage: bench/optimizer_race.sh [STEPS]   (needs `make demo`'s data, or prepares it)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
build=${BUILD_DIR:-build}
out=$build/race
anvil=$build/bin/anvil
if [ ! -f "$build/demo/kjv.h5" ]; then
  mkdir -p "$build/demo"
  bible "gen1:1-rev22:21" > "$build/demo/kjv.txt"
  "$anvil" tokenizer train --input "$build/demo/kjv.txt" --vocab-size 4096 --output "$build/demo/tokenizer.json"
  "$anvil" data prepare --input "$build/demo/kjv.txt" --tokenizer "$build/demo/tokenizer.json" --output "$build/demo/kjv.h5"
fi
mkdir -p "$out"
# name, default lr, extra settings
runs=("adamw 3e-3" "muon 2e-2 --set optimizer.adamw_lr_ratio=0.15" "soap 3e-3" "cosmos 3e-3")
for run in "${runs[@]}"; do
  read -r name lr extra <<<"$run"
  for scale in 0.5 1 2; do
    this_lr=$(awk -v a="$lr" -v s="$scale" 'BEGIN {printf "%g", a * s}')
    dir="$out/${name}_lr${this_lr}"
    log="$dir.log"
    # shellcheck disable=SC2086
    "$anvil" train configs/demo.yaml --set run.out_dir="$dir" --set optimizer.name="$name" \
      --set optimizer.lr="$this_lr" $extra --set training.steps="$steps" --set training.eval_every=${EVAL_EVERY:-25} \
      --set training.sample_every=0 --set checkpoint.every=0 --set checkpoint.resume=none \
      --set schedule.warmup_steps=30 --set logging.every=50 > "$log" 2>&1
    echo "$name lr=$this_lr: $(grep -o 'optimizer [0-9.]* MB' "$log" | head -1), $(grep 'final validation' "$log")"
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*", "metrics.jsonl"))):
    name = os.path.basename(os.path.dirname(path))
    val, ms = [], []
    for line in open(path):
        r = json.loads(line)
        if "val_loss" in r: val.append((r["step"], r["val_loss"]))
        if "ms" in r: ms.append(r["ms"])
    if val: runs[name] = (val, sum(ms[5:]) / max(1, len(ms[5:])))
print(f"{'run':24s} {'final val loss':>14s} {'ms/step':>9s}")
for name, (val, ms) in sorted(runs.items(), key=lambda kv: kv[1][0][-1][1]):
    print(f"{name:24s} {val[-1][1]:14.4f} {ms:9.1f}")
best = {}
for name, (val, _) in runs.items():
    opt = name.split("_lr")[0]
    if opt not in best or val[-1][1] < best[opt][1][-1][1]: best[opt] = (name, val)
# The goal: reach AdamW's final validation loss in fewer tokens (every step is the same tokens).
if "adamw" in best:
    target = best["adamw"][1][-1][1]
    print(f"steps to reach AdamW's best final validation loss {target:.4f} (best lr of each; evaluations every few steps):")
    for opt, (name, val) in sorted(best.items()):
        hit = next((s for s, v in val if v <= target), None)
        print(f"  {name:24s} {('step %d' % hit) if hit else 'not reached'}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib missing (pip install matplotlib): no plot"); sys.exit(0)
plt.figure(figsize=(7, 4.5))
for opt, (name, val) in sorted(best.items()):
    plt.plot([s for s, _ in val], [v for _, v in val], marker="o", label=name)
plt.xlabel("step (equal tokens per step)"); plt.ylabel("validation loss (nats/token)")
plt.title("Optimizer race: demo Llama on the KJV corpus, best lr each"); plt.legend(); plt.grid(alpha=0.3)
os.makedirs("bench/results", exist_ok=True)
plt.savefig("bench/results/optimizer_race.png", dpi=120, bbox_inches="tight")
print("wrote bench/results/optimizer_race.png")
PY
