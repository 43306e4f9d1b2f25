"""QA-LoRA's merge (ALGORITHMS.md §9) in torch float64, the oracle for
tests/parity/lora_merge_torch_test.cpp: the adapter model written as QA-LoRA's code runs it (the
input average-pooled per group with avg_pool1d, then lora_A, lora_B and the scaling) on the
group-wise dequantized base, and the merged zero points z' = z − scaling·(B·A)/(g·s).

usage: lora_merge_ref.py INPUTS.anvt OUTPUTS.anvt
INPUTS per case c (`int4`, `int2`): `c.codes` i32 [out, in], `c.scales`, `c.zeros` [out, in/g],
`c.A` [r, in/g], `c.B` [out, r], `c.x` [rows, in]; `c.meta` [2]: g, scaling.
OUTPUTS per case: `c.y` [rows, out] (the adapter model), `c.zeros_merged` [out, in/g], `c.y_merged`
[rows, out] (x through the base dequantized with the merged zeros): all computed in float64,
stored as f32.
"""
import sys

import torch
import torch.nn.functional as F

from tensor_file import read, write


def main(inp, out):
    tensors = read(inp)
    results = {}
    for case in sorted({name.split(".")[0] for name in tensors}):
        t = {k.split(".", 1)[1]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(case + ".")}
        g, scaling = int(t["meta"][0]), float(t["meta"][1])
        q = t["codes"].double()
        s, z = t["scales"].double(), t["zeros"].double()
        A, B, x = t["A"].double(), t["B"].double(), t["x"].double()

        def dequant(zeros):
            return s.repeat_interleave(g, dim=1) * (q - zeros.repeat_interleave(g, dim=1))

        pooled = F.avg_pool1d(x.unsqueeze(1), g, g).squeeze(1)
        y = x @ dequant(z).T + scaling * (pooled @ A.T) @ B.T
        zeros_merged = z - scaling * (B @ A) / (g * s)
        results[case + ".y"] = y.numpy()
        results[case + ".zeros_merged"] = zeros_merged.numpy()
        results[case + ".y_merged"] = (x @ dequant(zeros_merged).T).numpy()
    write(out, results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
