"""One LoRA linear layer in float64 torch, written as PEFT's lora.Linear and QA-LoRA's
peft_utils compute it: y = F.linear(x, W, b) + lora_B(lora_A(drop(pool(x)))) * scaling, with
pool = nn.AvgPool1d(g) over the input features (QA-LoRA; identity when g = 0) and the dropout
mask given (torch cannot draw anvil's Philox stream). The oracle for tests/parity/lora_parity_test.cpp.

usage: torch_lora.py INPUTS.anvt OUTPUTS.anvt
INPUTS, per case c (named `<name>.c`, c = 0 .. cases - 1): x [N, in], W [out, in], b [out],
A [r, in or in/g], B [out, r], dy [N, out], mask [N, A's cols] (0 or 1/(1-p)), params [2] = (scaling, g).
OUTPUTS per case: y [N, out] and the gradients of sum(y * dy): dx, dA, dB (W and b frozen).
"""
import sys

import torch
import torch.nn.functional as F

import tensor_file


def lora_case(f64, scaling, g):
    x = f64("x").requires_grad_(True)
    A = f64("A").requires_grad_(True)
    B = f64("B").requires_grad_(True)
    u = torch.nn.AvgPool1d(g)(x.unsqueeze(1)).squeeze(1) if g > 0 else x
    u = u * f64("mask")
    y = F.linear(x, f64("W"), f64("b")) + F.linear(F.linear(u, A), B) * scaling
    (y * f64("dy")).sum().backward()
    return {"y": y.detach().numpy(), "dx": x.grad.numpy(), "dA": A.grad.numpy(), "dB": B.grad.numpy()}


def main(inputs_path, outputs_path):
    t = tensor_file.read(inputs_path)
    out = {}
    c = 0
    while f"params.{c}" in t:
        scaling, g = t[f"params.{c}"].tolist()
        f64 = lambda name: torch.tensor(t[f"{name}.{c}"], dtype=torch.float64)
        for name, value in lora_case(f64, scaling, int(g)).items():
            out[f"{name}.{c}"] = value
        c += 1
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
