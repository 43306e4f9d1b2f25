"""The PyTorch peer for bench/train_throughput.cpp: the same model (from
tests/parity/torch_model.py), shapes, fp32 and AdamW, timed the same way.

usage: torch_train.py FAMILY HIDDEN LAYERS HEADS KV_HEADS VOCAB SEQ BATCH STEPS THREADS
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "parity"))
import torch_model  # noqa: E402


def build(family, hidden, layers, heads, kv_heads, vocab, seq):
    g = torch.Generator().manual_seed(0)
    normal = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).requires_grad_(True)
    ones = lambda n: torch.ones(n, requires_grad=True)
    zeros = lambda n: torch.zeros(n, requires_grad=True)
    p = {}
    if family == "gpt2":
        cfg = {"model_type": "gpt2", "n_embd": hidden, "n_head": heads, "n_layer": layers, "layer_norm_epsilon": 1e-5}
        p["transformer.wte.weight"] = normal(vocab, hidden)
        p["transformer.wpe.weight"] = normal(seq, hidden)
        for i in range(layers):
            pre = f"transformer.h.{i}"
            for ln in ("ln_1", "ln_2"):
                p[f"{pre}.{ln}.weight"], p[f"{pre}.{ln}.bias"] = ones(hidden), zeros(hidden)
            for name, (o, n) in {"attn.c_attn": (3 * hidden, hidden), "attn.c_proj": (hidden, hidden),
                                 "mlp.c_fc": (4 * hidden, hidden), "mlp.c_proj": (hidden, 4 * hidden)}.items():
                p[f"{pre}.{name}.weight"], p[f"{pre}.{name}.bias"] = normal(o, n), zeros(o)
        p["transformer.ln_f.weight"], p["transformer.ln_f.bias"] = ones(hidden), zeros(hidden)
    else:
        inter = (8 * hidden // 3 + 63) // 64 * 64
        d = hidden // heads
        cfg = {"model_type": "llama", "hidden_size": hidden, "num_attention_heads": heads,
               "num_key_value_heads": kv_heads, "num_hidden_layers": layers, "rms_norm_eps": 1e-6,
               "rope_theta": 10000.0, "tie_word_embeddings": False}
        p["model.embed_tokens.weight"] = normal(vocab, hidden)
        for i in range(layers):
            pre = f"model.layers.{i}"
            p[f"{pre}.input_layernorm.weight"] = ones(hidden)
            p[f"{pre}.post_attention_layernorm.weight"] = ones(hidden)
            for name, (o, n) in {"self_attn.q_proj": (heads * d, hidden), "self_attn.k_proj": (kv_heads * d, hidden),
                                 "self_attn.v_proj": (kv_heads * d, hidden), "self_attn.o_proj": (hidden, heads * d),
                                 "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
                                 "mlp.down_proj": (hidden, inter)}.items():
                p[f"{pre}.{name}.weight"] = normal(o, n)
        p["model.norm.weight"] = ones(hidden)
        p["lm_head.weight"] = normal(vocab, hidden)
    return cfg, p


def main(family, hidden, layers, heads, kv_heads, vocab, seq, batch, steps, threads):
    torch.set_num_threads(threads)
    cfg, params = build(family, hidden, layers, heads, kv_heads, vocab, seq)
    forward = torch_model.gpt2_forward if family == "gpt2" else torch_model.llama_forward
    opt = torch.optim.AdamW(params.values(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, vocab, (batch, seq))
    targets = torch.randint(0, vocab, (batch, seq))

    def step():
        opt.zero_grad(set_to_none=True)
        logits = forward(cfg, params, ids)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    elapsed = time.perf_counter() - t0
    print(f"torch {family}: {sum(t.numel() for t in params.values()) / 1e6:.2f}M params, B={batch} T={seq}, "
          f"{threads} threads, {steps} steps, loss {loss:.4f}")
    print(f"torch tokens/s {batch * seq * steps / elapsed:.1f}  ms/step {1e3 * elapsed / steps:.1f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(x) for x in a[1:]))
