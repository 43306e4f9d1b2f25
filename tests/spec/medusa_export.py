"""Medusa's side of tests/spec/medusa_export_test.cpp: loads DIR's base with transformers, builds
Medusa's head module exactly as medusa_model.py does (a ModuleList of Sequential(ResBlock * L,
Linear(hidden, vocab, bias=False)), ResBlock: x + SiLU(Linear(x))), loads medusa_lm_head.safetensors
into it with strict=True, and writes every head's logits at every position of IDS (comma-separated
token ids) as JSON: {"config": {...}, "logits": [head][position][vocab]}.
usage: medusa_export.py DIR IDS OUT"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


class ResBlock(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, hidden)
        self.act = torch.nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


def main(directory, ids, out):
    config = json.load(open(f"{directory}/config.json"))
    base = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads, layers = config["medusa_num_heads"], config["medusa_num_layers"]
    medusa_head = torch.nn.ModuleList(
        [torch.nn.Sequential(*[ResBlock(hidden) for _ in range(layers)], torch.nn.Linear(hidden, vocab, bias=False))
         for _ in range(heads)])
    medusa_head.load_state_dict(load_file(f"{directory}/medusa_lm_head.safetensors"), strict=True)
    tokens = torch.tensor([[int(t) for t in ids.split(",")]])
    with torch.no_grad():
        h = base(tokens, output_hidden_states=True).hidden_states[-1]  # after the final norm
        logits = [head(h)[0].tolist() for head in medusa_head]
    json.dump({"config": {k: config[k] for k in ("medusa_num_heads", "medusa_num_layers", "base_model_name_or_path")},
               "logits": logits}, open(out, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:])
