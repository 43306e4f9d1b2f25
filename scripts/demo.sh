#!/usr/bin/env bash
# `make demo`: train a tokenizer and a small Llama-style model on the King James
# Bible (Debian's bible-kjv) on the CPU, print the falling loss and a sample, and
# leave a checkpoint in build/demo/run/checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
out=$build/demo
anvil=$build/bin/anvil
if ! command -v bible >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -qq bible-kjv >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bible-kjv; }
fi
mkdir -p "$out"
rm -rf "$out/run"
bible "gen1:1-rev22:21" > "$out/kjv.txt"
echo "== corpus: $(wc -c < "$out/kjv.txt") bytes of the King James Bible"
"$anvil" tokenizer train --input "$out/kjv.txt" --vocab-size 4096 --output "$out/tokenizer.json"
"$anvil" data prepare --input "$out/kjv.txt" --tokenizer "$out/tokenizer.json" --output "$out/kjv.h5"
time "$anvil" train configs/demo.yaml
echo "== a sample from the final checkpoint"
"$anvil" generate --checkpoint "$out/run" --prompt "In the beginning" --max-tokens 40 --temperature 0.8 --seed 1
