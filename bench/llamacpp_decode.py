#!/usr/bin/env python3
"""llama.cpp's batch-1 decode speed on GGUF exports of our model, timed like build/bin/quant_decode_bench.

Issue 17's bench compares our quantized decode with llama.cpp's Q4 on the same model. Each GGUF is timed
in this one process, one after the other, with the same thread count: prefill `prompt` tokens
((i*7+3) % vocab, as quant_decode_bench), then `new` single-token evals ((s*13+5) % vocab); the figure
is the wall time of the single-token evals / new, median over `repeats` runs (the KV cache is reset
before each run; one untimed warm-up run first), with the process CPU time (all threads) beside it. Prefill is not timed.

  python bench/llamacpp_decode.py [--threads 2] [--prompt 32] [--new 64] [--repeats 5]
         [--check HF_DIR] [--greedy-text TEXT] LABEL=MODEL.gguf ...

--check HF_DIR: before timing, the last-position logits of the prefill against a plain numpy Llama
forward of the `anvil convert --to hf` export (model.safetensors + config.json; needs `safetensors`),
and 20 greedy tokens of --greedy-text per GGUF (compare with `anvil generate --temperature 0`).
Needs llama-cpp-python (and numpy).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="LABEL=PATH.gguf")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--check", metavar="HF_DIR", help="compare logits with a numpy forward of this HF export")
    p.add_argument("--greedy-text", default="In the beginning God created")
    args = p.parse_args()
    for m in args.models:
        label, _, path = m.partition("=")
        if not path or not os.path.isfile(path):
            p.error(f"model argument {m!r}: expected LABEL=PATH with an existing .gguf file")
    return args


# --- numpy reference (HF Llama semantics: RMSNorm, rotate-half RoPE, GQA, SwiGLU, tied lm_head) ---------
def reference_logits(hf_dir, ids):
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(hf_dir, "model.safetensors")).items()}
    H, Hkv, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    T = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, D, 2) / D)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)

    def rope(x):  # x [heads, T, D]
        rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], -1)
        return x * cos + rot * sin

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        h = rms(x, w[pre + "input_layernorm.weight"])
        q = (h @ w[pre + "self_attn.q_proj.weight"].T).reshape(T, H, D).transpose(1, 0, 2)
        k = (h @ w[pre + "self_attn.k_proj.weight"].T).reshape(T, Hkv, D).transpose(1, 0, 2)
        v = (h @ w[pre + "self_attn.v_proj.weight"].T).reshape(T, Hkv, D).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, H // Hkv, 0), np.repeat(v, H // Hkv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = (p @ v).transpose(1, 0, 2).reshape(T, H * D)
        x = x + a @ w[pre + "self_attn.o_proj.weight"].T
        h = rms(x, w[pre + "post_attention_layernorm.weight"])
        g = h @ w[pre + "mlp.gate_proj.weight"].T
        u = h @ w[pre + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[pre + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x[-1] @ head.T


def main():
    args = parse_args()
    import llama_cpp
    from llama_cpp import Llama

    print(f"llama-cpp-python {llama_cpp.__version__}; threads {args.threads}; prompt {args.prompt}, "
          f"new {args.new}, median of {args.repeats}")
    models = []
    for m in args.models:
        label, _, path = m.partition("=")
        llm = Llama(model_path=path, n_threads=args.threads, n_threads_batch=args.threads, n_ctx=256,
                    n_batch=args.prompt, seed=1234, logits_all=False, verbose=False)
        models.append((label, path, llm))
    vocab = models[0][2].n_vocab()
    prompt = [(i * 7 + 3) % vocab for i in range(args.prompt)]
    steps = [(s * 13 + 5) % vocab for s in range(args.new)]

    if args.check:
        ref = reference_logits(args.check, prompt)
        for label, _, llm in models:
            llm.reset()
            llm.eval(prompt)
            # llama-cpp-python keeps no scores without logits_all: read the context's last output row
            got = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            got = got.astype(np.float64)
            err = np.abs(got - ref).max()
            print(f"check {label}: last-position logits vs numpy reference: max |diff| {err:.3g} "
                  f"(ref max |logit| {np.abs(ref).max():.3g}); argmax {int(got.argmax())} vs {int(ref.argmax())}")
        for label, _, llm in models:
            llm.reset()
            toks = llm.tokenize(args.greedy_text.encode(), add_bos=False, special=False)
            out = []
            for t in llm.generate(toks, top_k=1, temp=0.0, reset=True):
                out.append(t)
                if len(out) == 20:
                    break
            text = llm.detokenize(out).decode(errors="replace")
            print(f"greedy {label}: prompt ids {toks}\n  ids {out}\n  text {args.greedy_text!r} + {text!r}")

    base = None
    for label, path, llm in models:
        runs, cpu = [], []
        for r in range(args.repeats + 1):  # run 0 warms up: it pages in the mmapped weights
            llm.reset()
            llm.eval(prompt)
            t0, c0 = time.perf_counter(), time.process_time()
            for tok in steps:
                llm.eval([tok])
            if r > 0:
                runs.append((time.perf_counter() - t0) * 1000 / args.new)
                cpu.append((time.process_time() - c0) * 1000 / args.new)
        ms = statistics.median(runs)
        base = base or ms
        print(f"{label:8s} decode {ms:.3f} ms/token ({1000 / ms:.1f} tokens/s), {base / ms:.2f}x {models[0][0]}; "
              f"process CPU {statistics.median(cpu):.3f} ms/token; file {os.path.getsize(path) / 1e6:.1f} MB; "
              f"runs {' '.join(f'{r:.2f}' for r in runs)}")


if __name__ == "__main__":
    sys.exit(main())
