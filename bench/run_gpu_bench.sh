#!/usr/bin/env bash
# GPU training throughput: anvil (bench/gpu_train_throughput.cpp) against PyTorch eager and
# torch.compile (bench/torch_gpu_train.py) on GPT-2 124M and a ~1B Llama, bf16, the same
# shapes, one after the other in one run so both see the same machine. Records tokens/s, MFU,
# the anvil/torch ratios and the top kernels by GPU time of each side (anvil: Nsight Compute
# over one step; PyTorch: torch.profiler over one step) in
# bench/results/<device>-gpu-train-<date>.txt (written to $OUT as well while it runs, so the
# device tool brings it back even from a run cut off at its time limit).
#
# usage: bench/run_gpu_bench.sh [BUILD_DIR]          (default build-gpu, from scripts/gpu_build.sh)
# env:   MODELS="gpt2-124m llama-1b"  STEPS=20  WARMUP=3  COMPILE=1 (torch.compile runs)
#        NCU=1 (anvil's per-kernel profile)  NCU_TIMEOUT=180  RUN_TIMEOUT=240 (seconds per run)
#        BATCH_gpt2_124m / BATCH_llama_1b to override a model's batch (both sides alike)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
source bench/gpu_device.sh
gpu_build_env "$build" run_gpu_bench
models=${MODELS:-gpt2-124m llama-1b}
steps=${STEPS:-20}
warmup=${WARMUP:-3}
run_timeout=${RUN_TIMEOUT:-240}
ncu_timeout=${NCU_TIMEOUT:-180}
mkdir -p bench/results
out="bench/results/$(gpu_device_slug)-gpu-train-$(date +%F).txt"
[ -n "${MODELS:-}" ] && out="${out%.txt}-$(echo "$models" | tr ' ' '+').txt"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PYTHONUNBUFFERED=1
# The library path of anvil's binaries only (gpu-env.sh); python keeps the machine's own.
anvil_ld="$ANVIL_RUNTIME_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | head -1; }  # a key=value of a RESULT line

bench_model() {
  local model=$1 batch_var="BATCH_${1//-/_}" batch_args=()
  [ -n "${!batch_var:-}" ] && batch_args=(--batch "${!batch_var}")
  echo "## $model"
  echo
  timeout "$run_timeout" env LD_LIBRARY_PATH="$anvil_ld" "$build/bin/gpu_train_throughput" --preset "$model" \
    --steps "$steps" --warmup "$warmup" "${batch_args[@]}" > "$tmp/anvil.log" 2>&1
  echo "anvil exit status $?"; cat "$tmp/anvil.log"; echo
  # The peak anvil's table names for this device (trainer/metrics.cpp), so both MFUs use one figure.
  local peak; peak=$(grep -o 'peak of [0-9.]* TFLOP' "$tmp/anvil.log" | grep -o '[0-9.]*' | head -1)
  local modes=(eager)
  [ "${COMPILE:-1}" = 1 ] && modes+=(compile)
  for mode in "${modes[@]}"; do
    timeout "$run_timeout" python3 bench/torch_gpu_train.py --model "$model" --mode "$mode" --steps "$steps" \
      --warmup "$warmup" --profile-top 3 --peak-tflops "${peak:-989}" "${batch_args[@]}" > "$tmp/torch-$mode.log" 2>&1
    echo "torch $mode exit status $?"; grep -v "^\s*$" "$tmp/torch-$mode.log" | tail -12; echo
  done

  local a; a=$(grep '^RESULT' "$tmp/anvil.log" | field tokens_per_s)
  for mode in "${modes[@]}"; do
    local t; t=$(grep '^RESULT' "$tmp/torch-$mode.log" | field tokens_per_s)
    if [ -n "$a" ] && [ -n "$t" ]; then
      awk -v a="$a" -v t="$t" -v m="$model" -v mode="$mode" \
        'BEGIN {printf "%s: anvil/torch-%s tokens/s ratio %.3f (%.0f vs %.0f)\n", m, mode, a / t, a, t}'
    else
      echo "$model: anvil/torch-$mode ratio unavailable (a run failed: see its output above)"
    fi
  done
  echo

  if [ "${NCU:-1}" = 1 ] && [ -n "$ncu_bin" ]; then
    echo "anvil top 3 kernels by GPU time over one step (Nsight Compute, gpu__time_duration.sum, clocks unlocked):"
    # ANVIL_PROFILE_RANGE: the bench brackets its timed steps with cudaProfilerStart/Stop, so the
    # warm-up step is not profiled. `env` sets the library path for the bench, not for ncu itself.
    timeout "$ncu_timeout" "$ncu_bin" --profile-from-start off --clock-control none --metrics gpu__time_duration.sum \
      --csv --print-units base --log-file "$tmp/ncu.csv" \
      env ANVIL_PROFILE_RANGE=1 LD_LIBRARY_PATH="$anvil_ld" \
      "$build/bin/gpu_train_throughput" --preset "$model" --steps 1 --warmup 1 "${batch_args[@]}" \
      > "$tmp/ncu-run.log" 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
      python3 bench/ncu_top_kernels.py "$tmp/ncu.csv" 3
    else
      echo "  ncu exit status $rc (124: timed out after ${ncu_timeout}s); its last lines:"
      tail -5 "$tmp/ncu-run.log" | sed 's/^/  /'
    fi
  elif [ "${NCU:-1}" = 1 ]; then
    echo "anvil per-kernel profile: ncu not found; the forward/backward/optimizer split above stands in"
  fi
  echo
}

(
  gpu_run_header "GPU training throughput, anvil vs PyTorch"
  echo "settings: bf16 mixed precision (anvil: bf16 compute copies + f32 master weights; torch: autocast over f32"
  echo "  weights), AdamW betas 0.9/0.95 wd 0.1 (fused in both), $warmup warm-up steps then $steps steps timed with"
  echo "  CUDA events; the loss reaches the host every step on both sides."
  echo "model FLOPs per token (trainer/metrics.cpp training_flops_per_token): 6 x matmul weights (projections, MLP,"
  echo "  LM head) + 6 x layers x T x heads x head_dim (causal attention); MFU against the peak anvil's table names for"
  echo "  this device (989 TFLOP/s for H100 SXM and H200, bf16 dense), passed to the torch runs too."
  echo
  for model in $models; do bench_model "$model"; done
) 2>&1 | tee "$out" ${OUT:+"$OUT/$(basename "$out")"}
echo "run_gpu_bench: wrote $out"
