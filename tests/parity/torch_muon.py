"""Muon + auxiliary AdamW written from ALGORITHMS.md 2a in PyTorch, the oracle for
tests/parity/muon_parity_test.cpp. The Muon math is written here from the notes
(not taken from the authors' code); the AdamW side is torch.optim.AdamW.

usage: torch_muon.py INPUTS.anvt OUTPUTS.anvt
INPUTS: `param.<name>`, `grad.<step>.<name>`, `lr` ([steps]), `wd.<name>` (AdamW
decay per AdamW param), `muon` ([momentum, nesterov, weight_decay, moonlight_scale,
sum_form, ns_steps, a, b, c, eps]), `adamw` ([beta1, beta2, eps, lr_ratio]).
OUTPUTS: `param.<step>.<name>` after each step in fp32 (Newton-Schulz in fp32, like
anvil), `param64.<step>.<name>` from the same recurrence run wholly in fp64, and the
final state `state.<name>.momentum_buffer` / `state.<name>.exp_avg` / `.exp_avg_sq`.
"""
import math
import sys

import torch

import tensor_file


def is_muon_param(name, value):
    """Hidden matrices: >= 2 dims, not the input embedding, not the output head."""
    return value.dim() >= 2 and "embed" not in name and not name.startswith("lm_head")


def orthogonalize(u, steps, a, b, c, eps):
    """Quintic Newton-Schulz: the small Gram side, Frobenius-normalised start."""
    x = u.reshape(u.shape[0], -1)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.t()
    x = x / (torch.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if transposed:
        x = x.t()
    return x.reshape(u.shape)


class MuonReference:
    def __init__(self, params, hyper, dtype):
        (self.beta, nesterov, self.wd, moonlight, sum_form, steps, a, b, c, eps) = (float(h) for h in hyper)
        self.nesterov, self.moonlight, self.sum_form = nesterov != 0, moonlight != 0, sum_form != 0
        self.ns = (int(steps), a, b, c, eps)
        self.params = params
        self.buffers = {n: torch.zeros_like(p) for n, p in params.items()}
        self.dtype = dtype

    def scale(self, p):
        rows, cols = p.shape[0], p[0].numel()
        if self.moonlight:
            return 0.2 * math.sqrt(max(rows, cols))
        return math.sqrt(max(1.0, rows / cols))

    def step(self, lr, grads):
        g_weight = 1.0 if self.sum_form else 1.0 - self.beta
        for n, p in self.params.items():
            g = grads[n].to(self.dtype)
            buf = self.buffers[n]
            buf.mul_(self.beta).add_(g_weight * g)
            u = g_weight * g + self.beta * buf if self.nesterov else buf
            o = orthogonalize(u, *self.ns)
            p.mul_(1.0 - lr * self.wd)
            p.sub_(lr * self.scale(p) * o)


def run(t, dtype, with_adamw_state):
    names = sorted(k[len("param."):] for k in t if k.startswith("param."))
    lrs = [float(x) for x in t["lr"]]
    beta1, beta2, adam_eps, ratio = (float(x) for x in t["adamw"])
    params = {n: torch.tensor(t["param." + n]).to(dtype) for n in names}
    muon_names = [n for n in names if is_muon_param(n, params[n])]
    adam_names = [n for n in names if n not in muon_names]
    muon = MuonReference({n: params[n] for n in muon_names}, t["muon"], dtype)
    adam_params = {n: params[n].clone().requires_grad_(True) for n in adam_names}
    groups = [{"params": [adam_params[n]], "weight_decay": float(t["wd." + n][0])} for n in adam_names]
    adam = torch.optim.AdamW(groups, lr=lrs[0], betas=(beta1, beta2), eps=adam_eps, foreach=False)
    trajectory = []
    for step, lr in enumerate(lrs):
        grads = {n: torch.tensor(t[f"grad.{step}.{n}"]) for n in names}
        muon.step(lr, grads)
        for g in adam.param_groups:
            g["lr"] = lr * ratio
        for n in adam_names:
            adam_params[n].grad = grads[n].to(dtype)
        adam.step()
        current = dict(muon.params)
        current.update({n: adam_params[n].detach() for n in adam_names})
        trajectory.append({n: current[n].clone() for n in names})
    state = {}
    if with_adamw_state:
        for n in muon_names:
            state[f"state.{n}.momentum_buffer"] = muon.buffers[n].numpy().copy()
        for n in adam_names:
            s = adam.state[adam_params[n]]
            state[f"state.{n}.exp_avg"] = s["exp_avg"].numpy().copy()
            state[f"state.{n}.exp_avg_sq"] = s["exp_avg_sq"].numpy().copy()
    return trajectory, state


def main(inputs_path, outputs_path):
    torch.set_num_threads(2)
    t = tensor_file.read(inputs_path)
    out = {}
    fp32, state = run(t, torch.float32, True)
    fp64, _ = run(t, torch.float64, False)
    for step, (p32, p64) in enumerate(zip(fp32, fp64)):
        for n in p32:
            out[f"param.{step}.{n}"] = p32[n].numpy().copy()
            out[f"param64.{step}.{n}"] = p64[n].numpy().astype("float32")
    out.update(state)
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
