"""SOAP in float64 PyTorch, written from ALGORITHMS.md 2b (not from the authors'
code): the oracle for tests/parity/soap_parity_test.cpp.

usage: torch_soap.py INPUTS.anvt OUTPUTS.anvt
INPUTS: `param.<name>`, `wd.<name>` (1 value), `grad.<call>.<name>`, `lr` ([calls]),
`hyper` ([beta1, beta2, shampoo_beta, eps, precondition_frequency, max_precond_dim]).
OUTPUTS: `param.<call>.<name>` after each call.

float64 throughout: the eigenbases are then exact to ~1e-15 and the comparison
measures the C++ fp32 rounding alone. At the first call L = (1-b)GG^T is rank
deficient on the longer side; its null-space eigenvectors are arbitrary, so both
sides replace them by the same canonical basis (kernels/linalg.h), classified with
the fp32 tolerance n * FLT_EPSILON * lambda_max that the C++ uses.
"""
import sys

import torch

import tensor_file

FLT_EPS = 1.1920928955078125e-07


def eigenbasis(mat):
    n = mat.shape[0]
    evals, q = torch.linalg.eigh(mat)
    evals, q = evals.flip(0), q.flip(1).clone()
    tol = n * FLT_EPS * max(float(evals[0]), 0.0)
    k = int((evals <= tol).sum())
    if k:  # U * polar(U^T E), E = the first k coordinate axes
        u = q[:, n - k:]
        w, _, vh = torch.linalg.svd(u[:k, :].T)
        q[:, n - k:] = u @ (w @ vh)
    return q


class SoapParam:
    def __init__(self, w, hyper, max_dim):
        self.w = w
        self.beta1, self.beta2, sb, self.eps, self.freq = hyper[:5]
        self.sb = self.beta2 if sb < 0 else sb
        self.m = torch.zeros_like(w)
        self.v = torch.zeros_like(w)
        self.t = 0
        two_d = w.dim() == 2
        self.L = torch.zeros(w.shape[0], w.shape[0]) if two_d and w.shape[0] <= max_dim else None
        self.R = torch.zeros(w.shape[1], w.shape[1]) if two_d and w.shape[1] <= max_dim else None
        self.QL = self.QR = None

    def rotate(self, x):  # Q_L^T x Q_R
        if self.QL is not None:
            x = self.QL.T @ x
        if self.QR is not None:
            x = x @ self.QR
        return x

    def rotate_back(self, x):  # Q_L x Q_R^T
        if self.QL is not None:
            x = self.QL @ x
        if self.QR is not None:
            x = x @ self.QR.T
        return x

    def accumulate(self, g):
        if self.L is not None:
            self.L = self.sb * self.L + (1 - self.sb) * (g @ g.T)
        if self.R is not None:
            self.R = self.sb * self.R + (1 - self.sb) * (g.T @ g)

    def refresh(self, left):
        factor, q = (self.L, self.QL) if left else (self.R, self.QR)
        est = torch.diag(q.T @ factor @ q)
        order = torch.argsort(est, descending=True)
        self.v = self.v.index_select(0 if left else 1, order)
        q, _ = torch.linalg.qr(factor @ q[:, order])
        if left:
            self.QL = q
        else:
            self.QR = q

    def first_call(self, g):
        self.accumulate(g)
        if self.L is not None:
            self.QL = eigenbasis(self.L)
        if self.R is not None:
            self.QR = eigenbasis(self.R)

    def step(self, g, lr, wd):
        self.t += 1
        gr = self.rotate(g)
        self.m = self.beta1 * self.m + (1 - self.beta1) * gr
        self.v = self.beta2 * self.v + (1 - self.beta2) * gr * gr
        n = self.m / (self.v.sqrt() + self.eps)
        step = lr * (1 - self.beta2 ** self.t) ** 0.5 / (1 - self.beta1 ** self.t)
        self.w = self.w - step * self.rotate_back(n)
        self.w = self.w - lr * wd * self.w
        if self.L is None and self.R is None:
            return
        m_orig = self.rotate_back(self.m)
        self.accumulate(g)
        if self.t % int(self.freq) == 0:
            if self.L is not None:
                self.refresh(True)
            if self.R is not None:
                self.refresh(False)
        self.m = self.rotate(m_orig)


def main(inputs_path, outputs_path):
    torch.set_default_dtype(torch.float64)
    t = tensor_file.read(inputs_path)
    names = sorted(k[len("param."):] for k in t if k.startswith("param."))
    hyper = [float(x) for x in t["hyper"]]
    params = {n: SoapParam(torch.tensor(t["param." + n], dtype=torch.float64), hyper, hyper[5]) for n in names}
    out = {}
    for call, lr in enumerate(t["lr"]):
        for n in names:
            g = torch.tensor(t[f"grad.{call}.{n}"], dtype=torch.float64)
            if call == 0:
                params[n].first_call(g)
            else:
                params[n].step(g, float(lr), float(t["wd." + n][0]))
            out[f"param.{call}.{n}"] = params[n].w.numpy().copy()
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
