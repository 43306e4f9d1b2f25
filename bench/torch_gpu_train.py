"""The PyTorch peer of bench/gpu_train_throughput.cpp: the same GPT-2 124M and ~1B Llama,
written in plain PyTorch (F.scaled_dot_product_attention, bf16 autocast over f32 weights,
fused AdamW), run eagerly and under torch.compile, timed with CUDA events around the steps
after the warm-up, the same way and on the same shapes as the anvil bench.

Model FLOPs per token are anvil's (trainer/metrics.cpp training_flops_per_token): 6 per matmul
weight (attention projections, MLP, LM head; embeddings, norms and activations not counted)
plus causal attention 6 * layers * T * (heads * head_dim) (QK^T and AV, forward + backward,
half the square). MFU is against --peak-tflops (989: H100 SXM bf16 dense, the figure anvil's
table uses for H100 and H200).

usage: torch_gpu_train.py --model gpt2-124m|llama-1b [--mode eager|compile] [--batch B] [--seq T]
       [--layers L] [--steps 20] [--warmup 3] [--device cuda|cpu] [--dtype bf16|f32]
       [--profile-top 3]   (torch.profiler over one step: the top kernels by GPU time)
Prints a readable summary and one machine-readable line starting with RESULT.
Smoke test without a GPU (torch >= 1.13): --device cpu --dtype f32 with a tiny --layers/--seq.
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "gpt2-124m": dict(family="gpt2", vocab=50257, hidden=768, layers=12, heads=12, kv_heads=12,
                      inter=3072, seq=1024, batch=16, tied=True),
    "llama-1b": dict(family="llama", vocab=32000, hidden=2048, layers=16, heads=32, kv_heads=8,
                     inter=5632, seq=2048, batch=4, tied=False),
}


def flops_per_token(c, seq):
    """trainer/metrics.cpp training_flops_per_token, term for term."""
    C, I, L, H, Hkv = c["hidden"], c["inter"], c["layers"], c["heads"], c["kv_heads"]
    D = C // H
    projections = C * (H + 2 * Hkv) * D + H * D * C
    mlp = (3 if c["family"] == "llama" else 2) * C * I
    head = C * c["vocab"]
    attention = 2 * seq * H * D
    return 3 * (2 * (L * (projections + mlp) + head) + L * attention)


def attend(q, k, v):
    """q: [B, H, T, D]; k, v: [B, Hkv, T, D]; causal."""
    if k.shape[1] != q.shape[1]:  # grouped-query: each KV head serves H / Hkv query heads
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # torch < 2.0 (the CPU smoke test): the textbook form.
    T = q.shape[2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return s.masked_fill(mask, float("-inf")).softmax(-1) @ v


class GPT2Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        C = c["hidden"]
        self.heads = c["heads"]
        self.ln_1, self.ln_2 = nn.LayerNorm(C, eps=1e-5), nn.LayerNorm(C, eps=1e-5)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, c["inter"]), nn.Linear(c["inter"], C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        x = x + self.c_proj(attend(q, k, v).transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class RMSNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(n)), eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(seq, dim, theta=10000.0):
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    ang = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
    return torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()


def rotate(x, cos, sin):  # Hugging Face rotate_half convention, x: [B, H, T, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class LlamaBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, self.H, self.Hkv = c["hidden"], c["heads"], c["kv_heads"]
        self.D = C // self.H
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(C), RMSNorm(C)
        self.q_proj = nn.Linear(C, self.H * self.D, bias=False)
        self.k_proj = nn.Linear(C, self.Hkv * self.D, bias=False)
        self.v_proj = nn.Linear(C, self.Hkv * self.D, bias=False)
        self.o_proj = nn.Linear(self.H * self.D, C, bias=False)
        self.gate_proj = nn.Linear(C, c["inter"], bias=False)
        self.up_proj = nn.Linear(C, c["inter"], bias=False)
        self.down_proj = nn.Linear(c["inter"], C, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.Hkv, self.D).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.Hkv, self.D).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        x = x + self.o_proj(attend(q, k, v).transpose(1, 2).reshape(B, T, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class LM(nn.Module):
    def __init__(self, c, seq):
        super().__init__()
        self.c = c
        self.wte = nn.Embedding(c["vocab"], c["hidden"])
        if c["family"] == "gpt2":
            self.wpe = nn.Embedding(seq, c["hidden"])
            self.blocks = nn.ModuleList(GPT2Block(c) for _ in range(c["layers"]))
            self.norm = nn.LayerNorm(c["hidden"], eps=1e-5)
        else:
            self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c["layers"]))
            self.norm = RMSNorm(c["hidden"])
            cos, sin = rope_tables(seq, c["hidden"] // c["heads"])
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        if c["tied"]:
            self.head.weight = self.wte.weight
        for name, p in self.named_parameters():  # N(0, 0.02) matrices, as anvil's init_weights
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        x = self.wte(ids)
        if self.c["family"] == "gpt2":
            x = x + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for b in self.blocks:
                x = b(x)
        else:
            T = ids.shape[1]
            for b in self.blocks:
                x = b(x, self.cos[:T], self.sin[:T])
        return self.head(self.norm(x))


def top_kernels(step, n):
    """The n CUDA kernels with the most GPU time over one step (torch.profiler), as lines."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    totals, total = {}, 0.0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            us = e.time_range.elapsed_us()
            totals[e.name] = totals.get(e.name, 0.0) + us
            total += us
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return [f"{100 * us / max(total, 1e-9):5.1f}%  {us / 1e3:8.2f} ms  {name[:110]}" for name, us in ranked]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(PRESETS), default="gpt2-124m")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--profile-top", type=int, default=0)
    a = ap.parse_args()

    c = dict(PRESETS[a.model])
    if a.layers:
        c["layers"] = a.layers
    T, B = a.seq or c["seq"], a.batch or c["batch"]
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = LM(c, T).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    # Weight decay on matrices only, as anvil's AdamWConfig (betas 0.9/0.95, wd 0.1, eps 1e-8).
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt_kw = dict(lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    if cuda:
        opt_kw["fused"] = True
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            **opt_kw)
    forward = model
    if a.mode == "compile":
        if not hasattr(torch, "compile"):
            raise SystemExit("torch_gpu_train: torch.compile needs torch >= 2.0")
        forward = torch.compile(model)
    ids = torch.randint(0, c["vocab"], (B, T), device=dev)
    targets = torch.randint(0, c["vocab"], (B, T), device=dev)
    use_autocast = a.dtype == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_autocast):
            logits = forward(ids)
            loss = F.cross_entropy(logits.reshape(-1, c["vocab"]).float(), targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()  # anvil's forward_loss hands the loss to the host every step too

    for _ in range(a.warmup):  # compile, autotune, allocator
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        for _ in range(a.steps):
            loss = step()
        t1.record()
        t1.synchronize()
        ms = t0.elapsed_time(t1) / a.steps
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
        name = torch.cuda.get_device_name(dev)
    else:
        start = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        ms = 1e3 * (time.perf_counter() - start) / a.steps
        peak_gb, name = 0.0, "cpu"
    tokens_per_s = B * T / (ms / 1e3)
    tflops = tokens_per_s * flops_per_token(c, T) / 1e12
    mfu = tflops / a.peak_tflops
    impl = f"torch-{a.mode}"
    print(f"{impl} {a.model} on {name}: {n_params / 1e6:.1f}M params, {a.dtype}, B={B} T={T}, "
          f"{a.warmup} warm-up + {a.steps} timed steps, loss {loss:.4f}, torch {torch.__version__}")
    print(f"{impl} tokens/s {tokens_per_s:.0f}  ms/step {ms:.2f}  model TFLOP/s {tflops:.1f}  "
          f"MFU against a peak of {a.peak_tflops:.0f} TFLOP/s: {100 * mfu:.1f}%  peak memory {peak_gb:.2f} GB")
    print(f"RESULT impl={impl} model={a.model} dtype={a.dtype} batch={B} seq={T} tokens_per_s={tokens_per_s:.1f} "
          f"ms_per_step={ms:.3f} tflops={tflops:.2f} mfu={mfu:.4f} peak_gb={peak_gb:.2f} loss={loss:.4f}")
    if a.profile_top and cuda:
        print(f"{impl} top {a.profile_top} kernels by GPU time over one step:")
        for line in top_kernels(step, a.profile_top):
            print("  " + line)


if __name__ == "__main__":
    main()
