"""transformers as the oracle for anvil's Hugging Face interop (tests/parity/hf_parity_test.cpp).

  make CONFIG.json IDS.safetensors HF_DIR LOGITS.safetensors [--shard-bytes N] [--bf16-dir DIR]
      Builds a small model from CONFIG.json with transformers (AutoConfig.for_model), gives it
      random weights well away from its init (seeded), saves it with
      save_pretrained(safe_serialization=True) to HF_DIR (sharded when --shard-bytes is given),
      and writes its fp32 logits on IDS (tensor "ids", int32 [B, T]) as tensor "logits".
      --bf16-dir also saves the same model cast to bfloat16.
  logits HF_DIR IDS.safetensors LOGITS.safetensors
      Loads HF_DIR with AutoModelForCausalLM.from_pretrained and writes its logits on IDS.

tokenizer.json is not checked here: anvil writes merges as ["a", "b"] pairs (tokenizers >= 0.20),
which the tokenizers 0.15 that transformers 4.38 needs cannot read; tokenizer_parity_test.cpp checks
anvil's tokenizer.json against a current tokenizers instead.

Runs with Debian's torch (/usr/bin/python3) and transformers from the project's pinned
--target directory on PYTHONPATH (scripts/install_deps.sh). Fully offline.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402


def logits_of(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids.long()).logits.float().contiguous()


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.rand(p.shape, generator=g, dtype=torch.float64).float()
            if p.dim() >= 2:
                p.copy_((noise - 0.5) * 0.5)  # uniform [-0.25, 0.25)
            else:
                p.add_((noise - 0.5) * 0.2)   # norms ~1, biases ~0, each nudged by [-0.1, 0.1)


def make(args):
    config_path, ids_path, hf_dir, out_path = args[:4]
    shard_bytes, bf16_dir = None, None
    rest = args[4:]
    while rest:
        if rest[0] == "--shard-bytes":
            shard_bytes = int(rest[1])
        elif rest[0] == "--bf16-dir":
            bf16_dir = rest[1]
        else:
            raise SystemExit(f"unknown option {rest[0]}")
        rest = rest[2:]
    fields = json.load(open(config_path))
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    randomize(model, 1234)
    model.eval()
    kwargs = {"safe_serialization": True}
    if shard_bytes:
        kwargs["max_shard_size"] = shard_bytes
    model.save_pretrained(hf_dir, **kwargs)
    ids = load_file(ids_path)["ids"]
    save_file({"logits": logits_of(model, ids)}, out_path)
    if bf16_dir:
        model.to(torch.bfloat16).save_pretrained(bf16_dir, safe_serialization=True)


def logits(args):
    hf_dir, ids_path, out_path = args[:3]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    save_file({"logits": logits_of(model, load_file(ids_path)["ids"])}, out_path)


if __name__ == "__main__":
    {"make": make, "logits": logits}[sys.argv[1]](sys.argv[2:])
