#!/usr/bin/env bash
# Per-rank communication volume of one training step for each layout of issue 4, next to the
# textbook volume (see bench/comm_volume.cpp), on the demo model and corpus (make demo prepares
# them) with a global batch of 8 sequences of 256 tokens in 4 micro-batches.
# usage: bench/run_comm_bench.sh [OUT.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
out=${1:-/dev/stdout}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMPI_MCA_btl=self,vader
config=$(mktemp configs/.comm_bench.XXXXXX.yaml)  # beside demo.yaml: its relative paths hold
# 4 KV heads (MHA) so that tp4 and sp4 can split them.
sed -e 's/micro_batch_size: 8/micro_batch_size: 8\n  grad_accum_steps: 4/' -e 's/num_key_value_heads: 2/num_key_value_heads: 4/' \
  configs/demo.yaml > "$config"
{
  echo "# bench/run_comm_bench.sh on $(date -u +%Y-%m-%d), $(nproc --all) CPU cores, Open MPI $(mpirun --version | head -1 | awk '{print $NF}')"
  # dp tp pp sp zero
  for layout in "2 1 1 1 0" "4 1 1 1 1" "2 1 1 1 2" "1 2 1 1 0" "1 4 1 1 0" "1 1 2 1 0" "1 1 4 1 0" \
                "1 1 1 2 0" "1 1 1 4 0" "2 2 1 1 0" "1 2 2 1 0" "2 2 2 1 0" "2 2 1 2 0"; do
    read -r dp tp pp sp zero <<<"$layout"
    n=$((dp * tp * pp * sp))
    mpirun --oversubscribe --bind-to none -np "$n" "$build/bin/comm_volume" "$config" $dp $tp $pp $sp $zero 2
  done
} > "$out"
rm -f "$config"
