"""torch.optim.AdamW on the params and per-step gradients anvil wrote, the oracle
for tests/parity/adamw_parity_test.cpp.

usage: torch_adamw.py INPUTS.anvt OUTPUTS.anvt
INPUTS: `param.<name>`, `wd.<name>` (1 value), `grad.<step>.<name>`, `lr` ([steps]),
`hyper` ([beta1, beta2, eps]). OUTPUTS: `param.<step>.<name>` after each step.
"""
import sys

import torch

import tensor_file


def main(inputs_path, outputs_path):
    t = tensor_file.read(inputs_path)
    names = sorted(k[len("param."):] for k in t if k.startswith("param."))
    lrs = t["lr"]
    beta1, beta2, eps = (float(x) for x in t["hyper"])
    params = {n: torch.tensor(t["param." + n], requires_grad=True) for n in names}
    groups = [{"params": [params[n]], "weight_decay": float(t["wd." + n][0])} for n in names]
    opt = torch.optim.AdamW(groups, lr=float(lrs[0]), betas=(beta1, beta2), eps=eps, foreach=False)
    out = {}
    for step, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = float(lr)
        for n in names:
            params[n].grad = torch.tensor(t[f"grad.{step}.{n}"])
        opt.step()
        for n in names:
            out[f"param.{step}.{n}"] = params[n].detach().numpy().copy()
    tensor_file.write(outputs_path, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
