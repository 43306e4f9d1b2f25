#!/usr/bin/env bash
# Runs the GPU tests (CTest label `gpu`) of a build made by scripts/gpu_build.sh and records
# the run in bench/results/<device>-gpu-tests-<date>.txt, written to $OUT as well while it runs
# when the device tool runs it (so the file comes back, even from a run cut off at its time
# limit). Exit status: CTest's.
# usage: bench/run_gpu_tests.sh [BUILD_DIR]      (default build-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
source bench/gpu_device.sh
gpu_build_env "$build" run_gpu_tests
mkdir -p bench/results
out="bench/results/$(gpu_device_slug)-gpu-tests-$(date +%F).txt"

(
  gpu_run_header "GPU tests (ctest -L gpu)"
  echo
  # GTEST_BRIEF: each binary prints its failures and its summary, not every passing case.
  anvil_env env GTEST_BRIEF=1 ctest --test-dir "$build" -L gpu -V --timeout 300
  rc=$?
  echo
  echo "ctest exit status: $rc"
  exit $rc
) 2>&1 | tee "$out" ${OUT:+"$OUT/$(basename "$out")"}
rc=${PIPESTATUS[0]}
echo "run_gpu_tests: wrote $out"
exit "$rc"
