"""transformers as the oracle for anvil's Hugging Face interop (tests/parity/hf_parity_test.cpp,
tests/e2e/hf_generate_test.cpp).

  make CONFIG.json IDS.safetensors HF_DIR LOGITS.safetensors [--shard-bytes N] [--bf16-dir DIR]
      Builds a small model from CONFIG.json with transformers (AutoConfig.for_model), gives it
      random weights well away from its init (seeded), saves it with
      save_pretrained(safe_serialization=True) to HF_DIR (sharded when --shard-bytes is given),
      and writes its fp32 logits on IDS (tensor "ids", int32 [B, T]) as tensor "logits".
      --bf16-dir also saves the same model cast to bfloat16.
  logits HF_DIR IDS.safetensors LOGITS.safetensors
      Loads HF_DIR with AutoModelForCausalLM.from_pretrained and writes its logits on IDS.
  generate HF_DIR PROMPT MAX_NEW_TOKENS OUT.json
      Loads the tokenizer with AutoTokenizer.from_pretrained(HF_DIR) (tokenizer.json and
      tokenizer_config.json) and the model, encodes PROMPT, runs model.generate(do_sample=False,
      max_new_tokens=MAX_NEW_TOKENS) and writes {"tokenizer_class", "prompt_ids", "new_ids",
      "new_text"} (new_text decoded by the same tokenizer).

Llama-3 rope scaling: transformers 4.38 (the newest that runs on Debian's torch 1.13) implements
rope_scaling types "linear" and "dynamic" only, and its LlamaConfig refuses "llama3". For a config
with rope_scaling {"rope_type": "llama3", ...} this script therefore builds the model without
rope_scaling and rewrites the inverse frequencies of every LlamaRotaryEmbedding with the Llama 3.1
formula (llama3_inv_freq below, written from Meta's published reference), so the attention, RoPE
application and everything else is still transformers' own model code; the saved config.json
carries the rope_scaling object as a Llama 3.1 checkpoint's does. "linear" runs natively.

Runs with Debian's torch (/usr/bin/python3) and transformers from the project's pinned
--target directory on PYTHONPATH (scripts/install_deps.sh). Fully offline.
"""
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402


# The reference implementation everywhere: 4.38's SDPA path (torch >= 2.1.1) ignores Mistral's sliding window.
ATTENTION = "eager"


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


def is_llama3(scaling):
    return isinstance(scaling, dict) and (scaling.get("rope_type") or scaling.get("type")) == "llama3"


def llama3_inv_freq(inv_freq, scaling):
    """Llama 3.1's frequency rescaling: wavelengths below original / high_freq_factor are kept,
    those above original / low_freq_factor divided by factor, and the band between blended
    linearly in original / wavelength."""
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, blended, scaled)


def apply_llama3(model, scaling):
    count = 0
    for module in model.modules():
        if type(module).__name__ == "LlamaRotaryEmbedding":
            # The buffer holds base ** (-2i / dim) as LlamaRotaryEmbedding computed it at construction.
            module.inv_freq.copy_(llama3_inv_freq(module.inv_freq.clone(), scaling))
            count += 1
    if count == 0:
        raise SystemExit("llama3 rope_scaling: the model has no LlamaRotaryEmbedding to rescale")


def put_rope_scaling(hf_dir, scaling):
    """Writes the llama3 rope_scaling object into a saved config.json."""
    path = os.path.join(hf_dir, "config.json")
    config = json.load(open(path))
    config["rope_scaling"] = scaling
    json.dump(config, open(path, "w"), indent=2)


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
    llama3 = fields.pop("rope_scaling") if is_llama3(fields.get("rope_scaling")) else None
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION)
    if llama3:
        apply_llama3(model, llama3)
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
    if llama3:
        for d in [hf_dir] + ([bf16_dir] if bf16_dir else []):
            put_rope_scaling(d, llama3)


def load_model(hf_dir):
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    if not is_llama3(config.get("rope_scaling")):
        return AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32, attn_implementation=ATTENTION)
    scaling = config.pop("rope_scaling")  # LlamaConfig 4.38 refuses it: build without, then rescale
    plain = AutoConfig.for_model(config.pop("model_type"), **config)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, config=plain, torch_dtype=torch.float32,
                                                 attn_implementation=ATTENTION)
    apply_llama3(model, scaling)
    return model


def logits(args):
    hf_dir, ids_path, out_path = args[:3]
    model = load_model(hf_dir)
    save_file({"logits": logits_of(model, load_file(ids_path)["ids"])}, out_path)


def generate(args):
    hf_dir, prompt, max_new, out_path = args[0], args[1], int(args[2]), args[3]
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = load_model(hf_dir).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             pad_token_id=model.config.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    json.dump({"tokenizer_class": type(tokenizer).__name__, "prompt_ids": ids[0].tolist(), "new_ids": new,
               "new_text": tokenizer.decode(new)}, open(out_path, "w"))


if __name__ == "__main__":
    {"make": make, "logits": logits, "generate": generate}[sys.argv[1]](sys.argv[2:])
