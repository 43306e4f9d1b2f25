"""The PyTorch oracle of tests/spec/group_attention_parity_test.cpp: softmax attention in
float64 under an explicit boolean mask built here from ParallelSpec's group-wise rule
(ALGORITHMS.md section 7), with autograd for the gradients.

usage: torch_group_attention.py INPUTS.anvt OUTPUTS.anvt
INPUTS: q [B, T, Hq, D], k and v [B, T, Hkv, D], dout [B, T, Hq, D], groups i32 [B, T]
(-1: a real token; a >= 0: a [MASK] token whose anchor is the real token at slot a),
optional segments i32 [B, T] (document ids), scale [1].
OUTPUTS: out [B, T, Hq, D], lse [B, Hq, T], dq, dk, dv (shapes of q, k, v), mask i32 [B, T, T].
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
import tensor_file  # noqa: E402


def group_mask(groups, segments):
    """mask[b, i, j]: query slot i sees key slot j. Real tokens attend causally to real tokens
    only; mask i of anchor t attends to the real tokens <= t and to the masks <= i of anchor t;
    nothing crosses a document."""
    B, T = groups.shape
    mask = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            anchor = int(groups[b, i])
            for j in range(i + 1):
                key_anchor = int(groups[b, j])
                if anchor == -1:
                    sees = key_anchor == -1
                else:
                    sees = (key_anchor == -1 and j <= anchor) or key_anchor == anchor
                if segments is not None and segments[b, i] != segments[b, j]:
                    sees = False
                mask[b, i, j] = sees
    return mask


def main():
    inputs = tensor_file.read(sys.argv[1])
    q = torch.tensor(inputs["q"], dtype=torch.float64, requires_grad=True)
    k = torch.tensor(inputs["k"], dtype=torch.float64, requires_grad=True)
    v = torch.tensor(inputs["v"], dtype=torch.float64, requires_grad=True)
    dout = torch.tensor(inputs["dout"], dtype=torch.float64)
    groups = torch.tensor(inputs["groups"])
    segments = torch.tensor(inputs["segments"]) if "segments" in inputs else None
    scale = float(inputs["scale"][0])
    group = q.shape[2] // k.shape[2]

    mask = group_mask(groups, segments)
    qh = q.permute(0, 2, 1, 3)                                       # [B, Hq, T, D]
    kh = k.permute(0, 2, 1, 3).repeat_interleave(group, dim=1)       # query head h uses KV head h // group
    vh = v.permute(0, 2, 1, 3).repeat_interleave(group, dim=1)
    scores = scale * qh @ kh.transpose(-1, -2)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = (torch.softmax(scores, dim=-1) @ vh).permute(0, 2, 1, 3)
    out.backward(dout)
    tensor_file.write(sys.argv[2], {
        "out": out.detach().numpy(), "lse": lse.detach().numpy(), "dq": q.grad.numpy(),
        "dk": k.grad.numpy(), "dv": v.grad.numpy(), "mask": mask.numpy().astype("int32"),
    })


if __name__ == "__main__":
    main()
