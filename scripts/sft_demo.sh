#!/usr/bin/env bash
# The sft workflow on `make demo`'s checkpoint: King James verses as prompt/response pairs
# (reference -> verse), a token store with the prompts masked out of the loss, and
# `anvil train configs/sft_demo.yaml`, then a validation loss and a sample.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
out=$build/demo
anvil=$build/bin/anvil
[ -d "$out/run/checkpoints" ] || { echo "sft_demo: no demo checkpoint in $out/run — run \`make demo\` first" >&2; exit 1; }
python3 scripts/kjv_sft_data.py "$out/kjv.txt" "$out/kjv_sft.jsonl"
"$anvil" data prepare --input "$out/kjv_sft.jsonl" --tokenizer "$out/tokenizer.json" --output "$out/kjv_sft.h5"
"$anvil" train configs/sft_demo.yaml "$@"
"$anvil" eval --checkpoint "$out/sft"
"$anvil" generate --checkpoint "$out/sft" --prompt $'Genesis 1:3\n' --max-tokens 24 --temperature 0
