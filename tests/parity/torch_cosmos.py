"""COSMOS in float64 PyTorch, written from ALGORITHMS.md 1 (not from the authors'
code): the oracle for tests/parity/cosmos_parity_test.cpp.

usage: torch_cosmos.py INPUTS.anvt OUTPUTS.anvt
With `ns_input` in INPUTS it only writes `ns_bf16` and `ns_f64`, Newton–Schulz of it.
INPUTS: `param.<name>`, `matrix.<name>` (1: matrix branch), `wd.<name>`,
`grad.<step>.<name>`, `lr` ([steps]), `hyper` ([beta1, beta2, eps, lr_ratio,
gamma, nesterov, reference_compat, ns_bf16, rank]). OUTPUTS: `param.<step>.<name>`.

float64 throughout, so the basis, QR and second moments are exact to ~1e-15 and the
comparison measures the C++ fp32 rounding. Newton–Schulz runs in torch bfloat16 when
`ns_bf16` (the reference's precision; then the two sides differ by bf16 rounding of
slightly different inputs), else in float64. At step 1 a null space of G^T G (wide
matrices) gets the same canonical basis as kernels/linalg.h.
"""
import math
import sys

import torch

import tensor_file

FLT_EPS = 1.1920928955078125e-07


def top_eigenvectors(mat, r):
    n = mat.shape[0]
    evals, q = torch.linalg.eigh(mat)
    evals, q = evals.flip(0), q.flip(1).clone()
    tol = n * FLT_EPS * max(float(evals[0]), 0.0)
    k = int((evals <= tol).sum())
    if k:
        u = q[:, n - k:]
        w, _, vh = torch.linalg.svd(u[:k, :].T)
        q[:, n - k:] = u @ (w @ vh)
    return q[:, :r]


def newton_schulz5(g, bf16):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16) if bf16 else g.clone()
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(5):
        A = x @ x.T
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    if transpose:
        x = x.T
    return x.to(torch.float64)


class CosmosParam:
    def __init__(self, w, matrix, h):
        self.w, self.matrix, self.h = w, matrix, h
        self.m = torch.zeros_like(w)
        self.t = 0
        if matrix:
            r = min(int(h["rank"]), w.shape[1])
            self.v = torch.zeros(w.shape[0], r)
            self.p = None
            self.s = None
            self.r = r
        else:
            self.v = torch.zeros_like(w)

    def step(self, g, lr, wd):
        self.t += 1
        if self.matrix:
            self.matrix_step(g, lr, wd)
        else:
            self.adam_step(g, lr, wd)

    def matrix_step(self, g, lr, wd):
        h, t = self.h, self.t
        b1, b2, eps = h["beta1"], h["beta2"], h["eps"]
        m, n = g.shape
        c1 = (1 - b1 ** t) / (1 - b1)
        c2 = 1 - b2 ** t
        self.m = b1 * self.m + g
        if t == 1:
            self.p = top_eigenvectors(g.T @ g, self.r)
            gp = g @ self.p
            self.s = (1 - b2) * gp.T @ gp
        else:
            p_old = self.p
            p_tilde = b2 * p_old @ self.s + (1 - b2) * g.T @ (g @ p_old)
            self.p, _ = torch.linalg.qr(p_tilde)
            tr = p_old.T @ self.p
            gp = g @ self.p
            self.s = b2 * tr.T @ self.s @ tr + (1 - b2) * gp.T @ gp
        self.v = b2 * self.v + (1 - b2) * gp * gp
        if h["nesterov"]:
            d = (g + b1 * self.m) / (1 + b1 * c1)
        else:
            d = self.m / c1
        dp = d @ self.p
        a_part = (dp / (self.v.sqrt() / math.sqrt(c2) + eps)) @ self.p.T
        scale = math.sqrt(m * n)
        u = a_part
        if self.r < n:
            o = newton_schulz5(d - dp @ self.p.T, h["ns_bf16"])
            u = a_part + h["gamma"] * scale * o / (o.norm() + eps)
        self.w = self.w * (1 - lr * wd)
        self.w = self.w - lr * h["lr_ratio"] * scale * u / (u.norm() + eps)

    def adam_step(self, g, lr, wd):
        h, t = self.h, self.t
        b1, b2, eps = h["beta1"], h["beta2"], h["eps"]
        if h["reference_compat"]:
            self.m = b1 * self.m + 0.1 * g
            c1 = 1 - 0.9 ** t
        else:
            self.m = b1 * self.m + (1 - b1) * g
            c1 = 1 - b1 ** t
        self.v = b2 * self.v + (1 - b2) * g * g
        self.w = self.w * (1 - lr * wd)
        self.w = self.w - (lr / c1) * self.m / (self.v.sqrt() / math.sqrt(1 - b2 ** t) + eps)


def main(inputs_path, outputs_path):
    torch.set_default_dtype(torch.float64)
    t = tensor_file.read(inputs_path)
    if "ns_input" in t:  # Newton–Schulz alone: torch bf16 and float64
        g = torch.tensor(t["ns_input"], dtype=torch.float64)
        tensor_file.write(outputs_path, {"ns_bf16": newton_schulz5(g, True).numpy(),
                                         "ns_f64": newton_schulz5(g, False).numpy()})
        return
    keys = ["beta1", "beta2", "eps", "lr_ratio", "gamma", "nesterov", "reference_compat", "ns_bf16", "rank"]
    h = dict(zip(keys, (float(x) for x in t["hyper"])))
    for k in ("nesterov", "reference_compat", "ns_bf16"):
        h[k] = h[k] != 0
    names = sorted(k[len("param."):] for k in t if k.startswith("param."))
    params = {n: CosmosParam(torch.tensor(t["param." + n], dtype=torch.float64), bool(t["matrix." + n][0]), h)
              for n in names}
    out = {}
    for step, lr in enumerate(t["lr"]):
        for n in names:
            params[n].step(torch.tensor(t[f"grad.{step}.{n}"], dtype=torch.float64), float(lr), float(t["wd." + n][0]))
            out[f"param.{step}.{n}"] = params[n].w.numpy().copy()
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
