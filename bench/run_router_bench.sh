#!/usr/bin/env bash
# Layer-skip routers on the CPU (issue 18). On one frozen target (TARGET, default the ~38M KJV model of
# bench/configs/spec_target.yaml; TARGET=build/demo/run for a quick look):
#   1. train router points: for each KIND and capacity target in CAPS a router run
#      (`anvil train configs/router-*.yaml --set router.kind/scope/unit/capacity_target/capacity_weight ...`);
#      Dr.LLM has no capacity target: one point per entry of DRLLM_SWEEP ("default" = the config as is,
#      else `key=value` sets, e.g. DRLLM_SWEEP="router.search_budget=8 router.search_budget=32");
#   2. validation loss of the base and of every point with `anvil eval` (the same batches: the router runs
#      take the base's run.seed and data.valid_fraction), skip ratio = 1 - the run's last val_capacity;
#   3. real prefill and decode tokens/s of every point against the base in the same process
#      (build/bin/router_decode_bench, one process per kind, PROMPTS batches of BATCH held-out
#      prompts each, medians of REPEATS);
#   4. early-exit self-speculation of the base for EXITS x GAMMAS (`anvil eval selfspec`: tau, speedup);
#   5. bench/results/cpu-router-<date>.txt (date, machine, load, tables) and .png (skip ratio vs loss).
# Every stage can be skipped or rerun alone: SKIP_TRAIN=1 SKIP_EVAL=1 SKIP_DECODE=1 SKIP_SELFSPEC=1; a point
# trained once per OUT directory is not trained again (delete OUT/<point>.done to redo it).
# usage: [TARGET=...] [STEPS=200] [CAPS="0.9 0.8 0.7 0.6"] [KINDS="..."] bench/run_router_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
anvil=$(realpath "$build/bin/anvil")
timer=$(realpath "$build/bin/router_decode_bench" 2>/dev/null || true)
target=${TARGET:-$build/bench/spec_target}
out=${OUT:-$build/router_bench}
steps=${STEPS:-200}
caps=${CAPS:-"0.9 0.8 0.7 0.6"}
weight=${WEIGHT:-1.0}
kinds=${KINDS-"mindskip_attn_seq mindskip_attn_token mindskip_block drllm"}  # KINDS="" : no router points
drllm_sweep=${DRLLM_SWEEP:-default}
eval_batches=${EVAL_BATCHES:-20}
batch=${BATCH:-1}
prompt_batches=${PROMPTS:-8}  # timed batches of held-out prompts: the routers decide per prompt
prompt_tokens=${PROMPT_TOKENS:-128}
new_tokens=${NEW_TOKENS:-64}
repeats=${REPEATS:-3}
gammas=${GAMMAS:-"2 4"}
threads=${THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
if [ ! -d "$target/checkpoints" ] && [ ! -f "$target/config.json" ]; then
  echo "no target checkpoint under $target — train it first ($anvil train bench/configs/spec_target.yaml, resumable)" \
       "or run with TARGET=build/demo/run (make demo)" >&2
  exit 1
fi
target=$(realpath "$target")
mkdir -p "$out"
out=$(realpath "$out")
# The base's validation split, layer count and seed, so every router run evaluates on the same documents.
# (A run directory's config.yaml holds absolute data and tokenizer paths.)
read -r base_seed base_fraction base_store base_seq_len base_tokenizer layers < <(python3 -c 'import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
d = c.get("data", {})
print(c.get("run", {}).get("seed", 0), d.get("valid_fraction", 0), d.get("train", "none"), d.get("seq_len", 256),
      c.get("tokenizer", {}).get("path", ""), c["model"]["num_hidden_layers"])' "$target/config.yaml")
router_n=${ROUTER_N:-$(( layers / 2 > 0 ? layers / 2 : 1 ))}  # routers on the last n layers but the final one
exits=${EXITS:-$(python3 -c "import sys; L = int(sys.argv[1]); print(' '.join(sorted({str(max(1, min(L - 1, L * k // 4))) for k in (1, 2, 3)}, key=int)))" "$layers")}

# ---- 1. router points ----
config_of() {  # kind -> config and sets
  case $1 in
    mindskip_attn_seq) echo "configs/router-mindskip.yaml --set router.kind=mindskip --set router.scope=attention --set router.unit=sequence" ;;
    mindskip_attn_token) echo "configs/router-mindskip.yaml --set router.kind=mindskip --set router.scope=attention --set router.unit=token" ;;
    mindskip_block) echo "configs/router-mindskip.yaml --set router.kind=mindskip --set router.scope=block --set router.unit=sequence" ;;
    mindskip_mlp_seq) echo "configs/router-mindskip.yaml --set router.kind=mindskip --set router.scope=mlp --set router.unit=sequence" ;;
    drllm) echo "configs/router-drllm.yaml --set router.kind=drllm" ;;
    *) echo "unknown router kind $1 (mindskip_attn_seq mindskip_attn_token mindskip_block mindskip_mlp_seq drllm)" >&2; return 1 ;;
  esac
}
common=(--set model.init_from="$target" --set training.steps="$steps" --set run.seed="$base_seed"
        --set data.train="$base_store" --set data.valid_fraction="$base_fraction" --set data.seq_len="$base_seq_len"
        --set tokenizer.path="$base_tokenizer"
        --set router.n="$router_n" --set schedule.warmup_steps=$((steps / 10)) --set training.eval_every="$steps"
        --set training.sample_every=0 --set checkpoint.every=0
        --set checkpoint.resume=none --set logging.progress=never)
: > "$out/points.tsv"
names=()
for kind in $kinds; do
  spec=$(config_of "$kind") || exit 1
  read -r -a cfg <<< "$spec"
  if [ "$kind" = drllm ]; then sweep=$drllm_sweep; else sweep=$caps; fi
  for point in $sweep; do
    if [ "$kind" = drllm ]; then
      name=drllm_${point//[^A-Za-z0-9.]/_}
      sets=(); [ "$point" != default ] && sets=(--set "$point")
    else
      name=${kind}_c$point
      sets=(--set router.capacity_target="$point" --set router.capacity_weight="$weight")
    fi
    printf '%s\t%s\t%s\n' "$kind" "$point" "$name" >> "$out/points.tsv"
    names+=("$name")
    [ -n "${SKIP_TRAIN:-}" ] || [ -f "$out/$name.done" ] && continue
    echo "== train $name"
    if "$anvil" train "${cfg[@]}" --set run.out_dir="$out/$name" "${common[@]}" "${sets[@]}" > "$out/$name.log" 2>&1; then
      touch "$out/$name.done"
    else
      echo "   failed: see $out/$name.log ($(head -2 "$out/$name.log" | tr "\n" " "))" >&2
    fi
  done
done

# ---- 2. validation loss: base and points, the same batches ----
if [ -z "${SKIP_EVAL:-}" ]; then
  echo "== eval base"
  "$anvil" eval --checkpoint "$target" --batches "$eval_batches" > "$out/eval_base.txt" 2>&1 || cat "$out/eval_base.txt" >&2
  for name in "${names[@]}"; do
    [ -f "$out/$name.done" ] || continue
    echo "== eval $name"
    # A router run loads as backbone + routers; `eval --routers` also reports the capacity when it exists.
    "$anvil" eval --routers "$out/$name" --batches "$eval_batches" > "$out/eval_$name.txt" 2>&1 ||
      "$anvil" eval --checkpoint "$out/$name" --batches "$eval_batches" > "$out/eval_$name.txt" 2>&1 ||
      echo "   failed: $(tail -1 "$out/eval_$name.txt")" >&2
  done
fi

# ---- 3. prefill / decode tokens/s against the base, one process per kind ----
if [ -z "${SKIP_DECODE:-}" ]; then
  [ -x "$timer" ] || { echo "no $build/bin/router_decode_bench — build it: ninja -C $build router_decode_bench" >&2; exit 1; }
  for kind in $kinds; do
    routed=()
    while IFS=$'\t' read -r k _ name; do
      [ "$k" = "$kind" ] && [ -f "$out/$name.done" ] && routed+=(--routed "$out/$name")
    done < "$out/points.tsv"
    [ ${#routed[@]} -gt 0 ] || continue
    echo "== decode timing $kind"
    "$timer" --base "$target" "${routed[@]}" --batch "$batch" --prompts "$prompt_batches" --prompt-tokens "$prompt_tokens" --new-tokens "$new_tokens" \
      --repeats "$repeats" --json "$out/decode_$kind.json" > "$out/decode_$kind.log" 2>&1 ||
      echo "   failed: $(tail -1 "$out/decode_$kind.log")" >&2
  done
fi

# ---- 4. early-exit self-speculation of the base ----
if [ -z "${SKIP_SELFSPEC:-}" ]; then
  echo "== self-speculation, exit layers $exits, gammas $gammas, ${SPEC_RUNS:-3} runs"
  rm -f "$out"/selfspec_*.json
  for r in $(seq "${SPEC_RUNS:-3}"); do  # the summary takes medians: one short run is at the mercy of the machine
    "$anvil" eval selfspec --checkpoint "$target" --exit-layer "${exits// /,}" --gammas "${gammas// /,}" \
      --temperatures "${SPEC_TEMPERATURES:-0,1}" --num-prompts "${SPEC_PROMPTS:-8}" \
      --prompt-tokens "${SPEC_PROMPT_TOKENS:-32}" --max-tokens "${SPEC_NEW_TOKENS:-64}" --seed "$r" \
      --json "$out/selfspec_$r.json" > "$out/selfspec_$r.log" 2>&1 || { cat "$out/selfspec_$r.log" >&2; exit 1; }
  done
fi

# ---- 5. the record ----
date=$(date +%F)
mkdir -p bench/results
result=bench/results/cpu-router-$date${TAG:+-$TAG}.txt
png=${result%.txt}.png
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
{
  echo "layer-skip router bench, $(date -u '+%F %H:%M UTC'), $cpu ($(nproc) cores, $threads threads),"\
       "load average at start $load_start, at the end $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
  echo "target $target: $(python3 -c 'import sys, yaml
m = yaml.safe_load(open(sys.argv[1]))["model"]
print(", ".join(f"{k} {m[k]}" for k in ("type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")))' \
    "$target/config.yaml")"
  echo "router runs: $steps steps each, routers on the last $router_n layers but the final one, capacity_weight $weight; validation: anvil eval --batches $eval_batches;" \
       "decode timing: $prompt_batches batches of $batch held-out prompts, $prompt_tokens prompt tokens, $new_tokens new tokens, median of $repeats"
  echo
  python3 bench/router_summary.py "$out" "$png"
} | tee "$result"
echo "wrote $result and $png"
