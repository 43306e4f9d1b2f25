#!/usr/bin/env python3
"""Run llama.cpp's convert_hf_to_gguf.py on an `anvil convert --to hf` export, unmodified but for two shims.

Usage: python bench/llamacpp_convert.py LLAMA_CPP_DIR HF_DIR --outfile OUT.gguf --outtype f32

Why a wrapper and not the converter alone (issue 17 bench, bench/llamacpp_decode.py):
- The converter's module body names torch.float8_e4m3fn / float8_e5m2 (torch >= 2.1); the only torch here
  is the system's 1.13. Our weights are F32, so the float8 entries are never used: alias them to uint8.
- It identifies the BPE pre-tokenizer by hashing the token ids of a probe text, and refuses a tokenizer it
  has no hash for. Ours is a byte-level BPE trained on the KJV with the GPT-2 split regex
  (pre_tokenizer ByteLevel, use_regex true), so its llama.cpp pre-tokenizer is "gpt-2": when the hash is
  unknown and tokenizer.json says exactly that, answer "gpt-2"; anything else still fails as upstream.
Needs a Python with torch (any version), numpy, transformers and the converter's gguf-py (on sys.path
through the converter itself).
"""
import json
import runpy
import sys
from pathlib import Path

import torch

for name in ("float8_e4m3fn", "float8_e5m2"):
    if not hasattr(torch, name):
        setattr(torch, name, torch.uint8)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    llama_dir = Path(sys.argv[1]).resolve()
    hf_dir = Path(sys.argv[2])
    script = llama_dir / "convert_hf_to_gguf.py"
    if not script.is_file():
        sys.exit(f"{script} not found: LLAMA_CPP_DIR must be a llama.cpp source tree "
                 "(e.g. vendor/llama.cpp of the llama-cpp-python sdist)")
    sys.path.insert(0, str(llama_dir))
    sys.path.insert(1, str(llama_dir / "gguf-py"))
    from conversion import base

    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    pre = tok.get("pre_tokenizer") or {}
    gpt2_split = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    upstream = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return upstream(self, tokenizer)
        except NotImplementedError:
            if not gpt2_split:
                raise
            print("llamacpp_convert: unknown pre-tokenizer hash; tokenizer.json is ByteLevel with the "
                  "GPT-2 regex -> tokenizer.ggml.pre = gpt-2", file=sys.stderr)
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), str(hf_dir)] + sys.argv[3:]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
