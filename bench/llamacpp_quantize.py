#!/usr/bin/env python3
"""Quantize a GGUF with the llama.cpp built into llama-cpp-python (llama_model_quantize: the library
behind the llama-quantize tool, which the package does not install), then list the tensor types.

  python bench/llamacpp_quantize.py IN.gguf OUT.gguf TYPE [THREADS 2]    TYPE: Q4_0 | Q8_0 | Q4_K_M | Q4_K_S ...
"""
import collections
import ctypes
import os
import sys

import llama_cpp


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3].upper()
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}", None)
    if ftype is None:
        sys.exit(f"unknown TYPE {kind!r}: llama_cpp has no LLAMA_FTYPE_MOSTLY_{kind}")
    if not os.path.isfile(src):
        sys.exit(f"{src}: no such GGUF")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize({src} -> {dst}, {kind}) failed with {rc}")
    try:
        from gguf import GGUFReader
    except ImportError:
        return 0
    counts = collections.Counter(t.tensor_type.name for t in GGUFReader(dst).tensors)
    print(f"{dst}: {os.path.getsize(dst) / 1e6:.1f} MB; tensor types " +
          ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
