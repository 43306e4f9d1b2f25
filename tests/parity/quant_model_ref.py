"""The other side of tests/parity/quant_hf_model_test.cpp: whole pre-quantized Hugging Face model
directories of a tiny Llama, written in numpy from the published formats (the per-Linear writers of
quant_hf_ref.py: AutoGPTQ's pack, bitsandbytes' Linear4bit state dict), independently of anvil.

usage: quant_model_ref.py PARAMS.anvt CONFIG.json OUT_DIR
PARAMS: every parameter of the model by its HF name (Linear weights [out, in], f32), `ids`, `targets`.
For each case below writes OUT_DIR/<case>/config.json (CONFIG plus the quantization_config a
quantizer writes) and OUT_DIR/<case>/model.safetensors (every Linear but lm_head quantized, the rest
f32), and OUT_DIR/<case>.anvt: PARAMS with each quantized weight replaced by its decode, the consumers'
way (the dense model torch_model.py evaluates as the reference).
"""
import json
import os
import sys

import numpy as np

from quant_hf_ref import F32, bnb_decode, bnb_tensors, gptq_decode, gptq_pack, gptq_quantize, write_safetensors
from tensor_file import read, write

# case: ("gptq", bits, group_size, desc_act, sym) | ("bnb", double_quant)
CASES = {"gptq4": ("gptq", 4, 32, False, False), "gptq4_act": ("gptq", 4, 32, True, False),
         "gptq4_sym_whole": ("gptq", 4, -1, False, True), "gptq2": ("gptq", 2, 32, False, False),
         "bnb_nf4": ("bnb", True), "bnb_nf4_plain": ("bnb", False)}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def gptq_sym(w, bits, group):
    """GPTQ's Quantizer with sym=True: s = 2·max|w| / maxq (f16), z = (maxq + 1) / 2 for every group."""
    out_f, in_f = w.shape
    maxq = F32(2 ** bits - 1)
    z = (2 ** bits) // 2
    codes = np.zeros((out_f, in_f), dtype=np.int64)
    scales = np.zeros((in_f // group, out_f), dtype=np.float16)
    for k in range(in_f // group):
        x = w[:, k * group:(k + 1) * group]
        amax = np.maximum(np.abs(x).max(axis=1), F32(1e-5))
        s16 = (F32(2) * amax / maxq).astype(np.float16)
        s = s16.astype(F32)
        codes[:, k * group:(k + 1) * group] = np.clip(np.rint(x / s[:, None]) + z, 0, maxq).astype(np.int64)
        scales[k] = s16
    return codes, scales, np.full((in_f // group, out_f), z, dtype=np.int64)


def renamed(t, module):
    return {module + k[len("layer"):]: v for k, v in t.items()}


def main():
    params = read(sys.argv[1])
    config = json.load(open(sys.argv[2]))
    out_dir = sys.argv[3]
    rng = np.random.default_rng(17)
    for case, spec in CASES.items():
        tensors, dense = {}, {}
        for name, value in params.items():
            if name in ("ids", "targets"):
                dense[name] = value
                continue
            module = name[:-len(".weight")]
            if not (name.endswith(".weight") and module.split(".")[-1] in LINEARS):
                tensors[name] = value.astype(F32)
                dense[name] = value
                continue
            if spec[0] == "bnb":
                t, w_hat = bnb_tensors(value, spec[1])
                assert np.array_equal(bnb_decode(t), w_hat)
            else:
                _, bits, group, act, sym = spec
                in_f = value.shape[1]
                g = in_f if group == -1 else group
                perm = rng.permutation(in_f) if act else np.arange(in_f)
                g_idx = np.empty(in_f, dtype=np.int64)
                g_idx[perm] = np.arange(in_f) // g
                codes, scales, zeros = gptq_sym(value, bits, g) if sym else gptq_quantize(value, bits, g, perm)
                t = gptq_pack(codes, scales, zeros, g_idx, bits, "gptq")
                w_hat = gptq_decode(t, bits, "gptq")
            tensors.update(renamed(t, module))
            dense[name] = w_hat.astype(F32)
        if spec[0] == "bnb":
            qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                  "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": spec[1],
                  "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
                  "llm_int8_threshold": 6.0, "llm_int8_skip_modules": None}
        else:
            _, bits, group, act, sym = spec
            qc = {"bits": bits, "group_size": group, "damp_percent": 0.01, "desc_act": act, "static_groups": False,
                  "sym": sym, "true_sequential": True, "quant_method": "gptq", "checkpoint_format": "gptq"}
        os.makedirs(f"{out_dir}/{case}", exist_ok=True)
        with open(f"{out_dir}/{case}/config.json", "w") as f:
            json.dump(dict(config, quantization_config=qc), f, indent=2)
        write_safetensors(f"{out_dir}/{case}/model.safetensors", tensors)
        write(f"{out_dir}/{case}.anvt", dense)


if __name__ == "__main__":
    main()
