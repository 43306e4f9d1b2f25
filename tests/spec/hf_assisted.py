"""transformers' assisted generation as the oracle for drafter interop (tests/spec/hf_assisted_test.cpp).

  hf_assisted.py TARGET_DIR DRAFTER_DIR PROMPTS.json MAX_NEW_TOKENS OUT.json

Loads both exported Hugging Face directories with AutoModelForCausalLM (fp32, eager attention),
and for every prompt (a list of token ids in PROMPTS.json) runs the target's greedy
model.generate alone and with assistant_model=drafter (do_sample=False), one prompt at a time
(transformers 4.38's assisted generation takes batch 1). Writes {"plain": [[ids]], "assisted":
[[ids]]}, the new tokens only. Runs with Debian's torch and the pinned transformers on PYTHONPATH.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def load(hf_dir):
    return AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32,
                                                attn_implementation="eager").eval()


def main(target_dir, drafter_dir, prompts_path, max_new, out_path):
    target, drafter = load(target_dir), load(drafter_dir)
    eos = target.config.eos_token_id
    out = {"plain": [], "assisted": []}
    for prompt in json.load(open(prompts_path)):
        ids = torch.tensor([prompt], dtype=torch.long)
        common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=int(max_new), do_sample=False,
                      pad_token_id=eos)
        with torch.no_grad():
            plain = target.generate(ids, **common)
            assisted = target.generate(ids, assistant_model=drafter, **common)
        out["plain"].append(plain[0, ids.shape[1]:].tolist())
        out["assisted"].append(assisted[0, ids.shape[1]:].tolist())
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:6])
