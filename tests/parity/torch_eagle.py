"""The EAGLE drafter's training-time-test forward written directly in PyTorch (float64), the
oracle for tests/parity/eagle_parity_test.cpp. Written the way EAGLE-3's reference code runs
the steps (a growing list of per-step keys/values, no packed sequence): step s's query at column
t sees the step-0 keys of columns <= t and the keys of steps 1..s at its own column t.

usage: torch_eagle.py CONFIG.json INPUTS.anvt OUTPUTS.anvt
CONFIG: the target's Llama config (Hugging Face names) plus "ttt_steps".
INPUTS: the drafter's params by name (eagle.fc.weight, eagle.input_proj.weight,
model.layers.0.*, model.norm.weight), model.embed_tokens.weight (frozen), `ids` [B, T] i32,
`tap0..2` [B, T, C], `weights` [B, S*T, C]. OUTPUTS: `y` [B, S*T, C] (every step's normed
output) and `grad.<name>` of sum(weights * y) for every drafter param.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F

import tensor_file
from torch_model import linear, rms_norm, rotate_half


def main(config_path, inputs_path, outputs_path):
    with open(config_path) as f:
        cfg = json.load(f)
    inputs = tensor_file.read(inputs_path)
    ids = torch.from_numpy(inputs.pop("ids")).long()
    taps = [torch.from_numpy(inputs.pop(f"tap{i}")).double() for i in range(3)]
    weights = torch.from_numpy(inputs.pop("weights")).double()
    embed = torch.from_numpy(inputs.pop("model.embed_tokens.weight")).double()
    p = {n: torch.from_numpy(a).double().requires_grad_(True) for n, a in inputs.items()}
    S = cfg["ttt_steps"]
    B, T = ids.shape
    C, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or C // H
    eps = cfg["rms_norm_eps"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    pre = "model.layers.0"

    def rope(t, positions):  # t [B, heads, T, D], positions [T]
        angles = positions.double()[:, None] * inv_freq
        emb = torch.cat((angles, angles), dim=-1)
        return t * emb.cos() + rotate_half(t) * emb.sin()

    feature = linear(p, "eagle.fc", torch.cat(taps, dim=-1))
    keys, values = [], []  # per step: [B, Hkv, T, D]
    outputs = []
    for s in range(S):
        tok = torch.zeros(B, T, dtype=torch.long)
        tok[:, : max(T - 1 - s, 0)] = ids[:, 1 + s:]
        u = linear(p, "eagle.input_proj", torch.cat((embed[tok], feature), dim=-1))
        positions = torch.clamp(torch.arange(T) + s, max=T - 1)
        h = rms_norm(u, p[pre + ".input_layernorm.weight"], eps)
        q = rope(linear(p, pre + ".self_attn.q_proj", h).view(B, T, H, D).transpose(1, 2), positions)
        keys.append(rope(linear(p, pre + ".self_attn.k_proj", h).view(B, T, Hkv, D).transpose(1, 2), positions))
        values.append(linear(p, pre + ".self_attn.v_proj", h).view(B, T, Hkv, D).transpose(1, 2))
        group = H // Hkv
        k0 = keys[0].repeat_interleave(group, dim=1)
        v0 = values[0].repeat_interleave(group, dim=1)
        scores = [(q @ k0.transpose(-1, -2) / math.sqrt(D)).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                                                        float("-inf"))]
        for j in range(1, s + 1):  # the column's own earlier steps: one key each
            kj = keys[j].repeat_interleave(group, dim=1)
            scores.append((q * kj).sum(-1, keepdim=True) / math.sqrt(D))
        attn = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
        a = attn[..., :T] @ v0
        for j in range(1, s + 1):
            a = a + attn[..., T + j - 1:T + j] * values[j].repeat_interleave(group, dim=1)
        x = u + linear(p, pre + ".self_attn.o_proj", a.transpose(1, 2).reshape(B, T, H * D))
        h = rms_norm(x, p[pre + ".post_attention_layernorm.weight"], eps)
        x = x + linear(p, pre + ".mlp.down_proj",
                       F.silu(linear(p, pre + ".mlp.gate_proj", h)) * linear(p, pre + ".mlp.up_proj", h))
        outputs.append(rms_norm(x, p["model.norm.weight"], eps))
        feature = x  # the next step drafts from this step's pre-norm output
    y = torch.cat(outputs, dim=1)
    (weights * y).sum().backward()
    out = {"y": y.detach().numpy()}
    for name, t in p.items():
        out["grad." + name] = t.grad.numpy()
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(*sys.argv[1:4])
