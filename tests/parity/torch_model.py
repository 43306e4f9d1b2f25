"""GPT-2 and Llama written directly in PyTorch from the architecture definitions
(Hugging Face field and parameter names), the oracle for anvil's parity tests.

usage: torch_model.py CONFIG.json INPUTS.anvt OUTPUTS.anvt
INPUTS holds every parameter by name (Linear weights as [out, in]), `ids` and
`targets` ([B, T] i32), optionally `positions` ([B, T] i32 position ids; default 0 .. T-1)
and `segments` ([B, T] i32 document ids of packed rows: a block-diagonal causal mask). OUTPUTS gets `logits`, `loss` and `grad.<name>` for every
parameter, computed in float64.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F

import tensor_file

IGNORE_INDEX = -100


def linear(p, name, x):
    y = x @ p[name + ".weight"].t()
    if name + ".bias" in p:
        y = y + p[name + ".bias"]
    return y


def causal_attention(q, k, v, segments=None):
    """q: [B, H, T, D]; k, v: [B, Hkv, T, D]; KV head h serves query heads h*g .. h*g+g-1.
    segments [B, T]: a query sees only keys of its own document."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    T = q.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    if segments is not None:
        mask = mask | (segments[:, None, :, None] != segments[:, None, None, :])
    scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def gpt2_forward(cfg, p, ids, positions, segments):
    B, T = ids.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    eps = cfg["layer_norm_epsilon"]
    x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][positions]
    for i in range(cfg["n_layer"]):
        pre = f"transformer.h.{i}"
        h = F.layer_norm(x, (C,), p[pre + ".ln_1.weight"], p[pre + ".ln_1.bias"], eps)
        q, k, v = linear(p, pre + ".attn.c_attn", h).split(C, dim=-1)
        heads = lambda t: t.view(B, T, H, C // H).transpose(1, 2)
        a = causal_attention(heads(q), heads(k), heads(v), segments).transpose(1, 2).reshape(B, T, C)
        x = x + linear(p, pre + ".attn.c_proj", a)
        h = F.layer_norm(x, (C,), p[pre + ".ln_2.weight"], p[pre + ".ln_2.bias"], eps)
        m = F.gelu(linear(p, pre + ".mlp.c_fc", h), approximate="tanh")
        x = x + linear(p, pre + ".mlp.c_proj", m)
    x = F.layer_norm(x, (C,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    return x @ p["transformer.wte.weight"].t()


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def llama_forward(cfg, p, ids, positions, segments):
    B, T = ids.shape
    C, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or C // H
    eps = cfg["rms_norm_eps"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    angles = positions.double()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, T, D]: broadcast over heads
    dtype = p["model.embed_tokens.weight"].dtype
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    rope = lambda t: t * cos + rotate_half(t) * sin
    x = p["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        h = rms_norm(x, p[pre + ".input_layernorm.weight"], eps)
        q = linear(p, pre + ".self_attn.q_proj", h).view(B, T, H, D).transpose(1, 2)
        k = linear(p, pre + ".self_attn.k_proj", h).view(B, T, Hkv, D).transpose(1, 2)
        v = linear(p, pre + ".self_attn.v_proj", h).view(B, T, Hkv, D).transpose(1, 2)
        a = causal_attention(rope(q), rope(k), v, segments).transpose(1, 2).reshape(B, T, H * D)
        x = x + linear(p, pre + ".self_attn.o_proj", a)
        h = rms_norm(x, p[pre + ".post_attention_layernorm.weight"], eps)
        m = F.silu(linear(p, pre + ".mlp.gate_proj", h)) * linear(p, pre + ".mlp.up_proj", h)
        x = x + linear(p, pre + ".mlp.down_proj", m)
    x = rms_norm(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else p["lm_head.weight"]
    return x @ head.t()


def main(config_path, inputs_path, outputs_path):
    with open(config_path) as f:
        cfg = json.load(f)
    inputs = tensor_file.read(inputs_path)
    ids = torch.from_numpy(inputs.pop("ids")).long()
    targets = torch.from_numpy(inputs.pop("targets")).long()
    B, T = ids.shape
    positions = torch.arange(T).expand(B, T)
    if "positions" in inputs:
        positions = torch.from_numpy(inputs.pop("positions")).long()
    segments = torch.from_numpy(inputs.pop("segments")).long() if "segments" in inputs else None
    params = {n: torch.from_numpy(a).double().requires_grad_(True) for n, a in inputs.items()}
    forward = gpt2_forward if cfg["model_type"] == "gpt2" else llama_forward
    logits = forward(cfg, params, ids, positions, segments)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    loss.backward()
    out = {"logits": logits.detach().numpy(), "loss": loss.detach().reshape(1).numpy()}
    for name, t in params.items():
        out["grad." + name] = t.grad.numpy()
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(*sys.argv[1:4])
