"""The distillation losses of models/distill_loss.h in float64 torch, the oracle for
tests/parity/distill_loss_parity_test.cpp: the filter is eval/generate.h's rule written
independently (temperature, top-k with ties kept, top-p over the sorted softmax), the
gradient comes from autograd.

usage: torch_distill.py INPUTS.anvt OUTPUTS.anvt
INPUTS: `student`, `teacher` [N, V], `targets` [N] (i32, -100 = ignored),
`cases` [C, 4] rows of (divergence 0..3 = forward_kl, reverse_kl, tvd, jsd; T; top_k; top_p).
OUTPUTS per case c: `loss.c` and `acceptance.c` [N] (0 on ignored rows), `grad.c` [N, V]
(the gradient of the summed row losses with respect to the student's logits).
"""
import sys

import torch

import tensor_file


def kept_mask(z, temperature, top_k, top_p):
    """Which tokens of each row of z (raw logits) the sampler keeps."""
    s = z / temperature
    keep = torch.ones_like(s, dtype=torch.bool)
    if 0 < top_k < s.shape[1]:
        kth = torch.topk(s, top_k, dim=1).values[:, -1:]
        keep &= s >= kth
    if top_p < 1.0:
        probs = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=1)
        for i in range(s.shape[0]):
            order = sorted(range(s.shape[1]), key=lambda j: (-float(probs[i, j]), j))
            before = 0.0
            for n, j in enumerate(order):
                if n > 0 and before >= top_p:
                    keep[i, j] = False
                else:
                    before += float(probs[i, j])
    return keep


def divergence(kind, p, q):
    xlogy = torch.special.xlogy
    if kind == 0:
        return (xlogy(p, p) - xlogy(p, q)).sum(1)
    if kind == 1:
        return (xlogy(q, q) - xlogy(q, p)).sum(1)
    if kind == 2:
        return 0.5 * (p - q).abs().sum(1)
    m = 0.5 * (p + q)
    return 0.5 * (xlogy(p, p) - xlogy(p, m)).sum(1) + 0.5 * (xlogy(q, q) - xlogy(q, m)).sum(1)


def main(inputs_path, outputs_path):
    t = tensor_file.read(inputs_path)
    zs = torch.tensor(t["student"], dtype=torch.float64)
    zt = torch.tensor(t["teacher"], dtype=torch.float64)
    scored = torch.tensor(t["targets"]) != -100
    out = {}
    for c, (kind, temperature, top_k, top_p) in enumerate(t["cases"].tolist()):
        kind, top_k = int(kind), int(top_k)
        student = zs.clone().requires_grad_(True)
        keep_p = kept_mask(zt, temperature, top_k, top_p)
        p = torch.softmax((zt / temperature).masked_fill(~keep_p, float("-inf")), dim=1)
        q = torch.softmax(student / temperature, dim=1)
        loss = torch.where(scored, divergence(kind, p, q), torch.zeros(()))
        loss.sum().backward()
        keep_q = kept_mask(zs, temperature, top_k, top_p)
        q_f = torch.softmax((zs / temperature).masked_fill(~keep_q, float("-inf")), dim=1)
        acceptance = torch.where(scored, torch.minimum(p, q_f).sum(1), torch.zeros(()))
        out[f"loss.{c}"] = loss.detach().numpy()
        out[f"acceptance.{c}"] = acceptance.numpy()
        out[f"grad.{c}"] = student.grad.numpy()
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
