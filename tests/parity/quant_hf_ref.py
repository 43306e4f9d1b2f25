"""The other side of tests/parity/quant_hf_format_test.cpp: bitsandbytes NF4 and GPTQ checkpoints in
numpy, written from the published formats (bitsandbytes QuantState.as_dict(packed=True) and
pack_dict_to_tensor; AutoGPTQ's QuantLinear.pack and GPTQ's Quantizer.find_params, round to nearest
without the Hessian update, which changes the codes, not the format), independently of anvil.

usage: quant_hf_ref.py INPUTS.anvt OURS_DIR OUT_DIR
INPUTS: `<case>.w` [out, in] f32 per case below, `x` [rows, 128] f32 (act-order products).
Writes OUT_DIR/<case>.safetensors (Linear "layer"), OUT_DIR/<case>.json (GPTQ: quantize_config.json)
and OUT_DIR/expected.anvt: `<case>.w_hat` (the decode, original column order) and, for the
act-order cases, `<case>.y` = x · Ŵᵀ in float64 rounded to f32.
Reads OURS_DIR/<case>.safetensors (anvil's writers; GPTQ configs in OURS_DIR/<case>.json) and decodes
them the consumers' way into `ours.<case>.w_hat`.
The safetensors package is not installed for /usr/bin/python3: the file format is read and written
here directly (8-byte header length, JSON header, data).
"""
import json
import os
import struct
import sys

import numpy as np

from quant_numpy_ref import NF4, dynamic_map_numpy, quantize_nf4
from tensor_file import read, write

F32 = np.float32
ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "U8": np.uint8}

BNB_CASES = {"bnb_plain": False, "bnb_nested": True}
# case: (bits, group, checkpoint_format, act_order)
GPTQ_CASES = {"gptq4_v1": (4, 32, "gptq", False), "gptq2_v2": (2, 16, "gptq_v2", False),
              "gptq4_act": (4, 32, "gptq", True), "gptq2_act": (2, 32, "gptq", True)}


def write_safetensors(path, tensors):
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))
    header, offset = {}, 0
    names = {np.dtype(v): k for k, v in ST_DTYPES.items()}
    for name, arr in items:
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, arr in items:
            f.write(np.ascontiguousarray(arr).tobytes())


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    base, out = 8 + n, {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(raw[base + b:base + end], dtype=ST_DTYPES[e["dtype"]]).reshape(e["shape"])
    return out


# ---------------------------------------------------------------- bitsandbytes

def bnb_tensors(w, nested):
    """Linear4bit._save_to_state_dict of `layer` quantized by the numpy reference (quant_storage uint8)."""
    q = quantize_nf4(w, nested, dynamic_map_numpy())
    t = {"layer.weight": q["packed"].astype(np.uint8).reshape(-1, 1), "layer.weight.quant_map": NF4.copy()}
    state = {"quant_type": "nf4", "absmax": None, "blocksize": 64, "quant_map": None, "dtype": "bfloat16",
             "shape": list(w.shape)}
    if nested:
        t["layer.weight.absmax"] = q["absmax_codes"].astype(np.uint8)
        t["layer.weight.nested_absmax"] = q["absmax_scales"].astype(F32)
        t["layer.weight.nested_quant_map"] = dynamic_map_numpy()
        state.update(nested_absmax=None, nested_blocksize=256, nested_quant_map=None, nested_dtype="float32",
                     nested_offset=float(q["offset"][0]))
    else:
        t["layer.weight.absmax"] = q["absmax"].astype(F32)
    # as_dict(packed=True): the non-tensor items, in insertion order, through json.dumps.
    packed = {k: v for k, v in state.items() if v is not None}
    t["layer.weight.quant_state.bitsandbytes__nf4"] = np.frombuffer(json.dumps(packed).encode(), dtype=np.uint8)
    return t, q["w_hat"]


def bnb_decode(t):
    """dequantize_4bit: NF4[code] · absmax, the nested absmax decoded as dequantize_blockwise + offset."""
    state = json.loads(bytes(t["layer.weight.quant_state.bitsandbytes__nf4"]).decode())
    assert state["quant_type"] == "nf4" and state["blocksize"] == 64
    out_f, in_f = state["shape"]
    packed = t["layer.weight"].reshape(-1)
    codes = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)
    if "nested_offset" in state:
        scales = t["layer.weight.nested_absmax"]
        amap = t["layer.weight.nested_quant_map"]
        codes8 = t["layer.weight.absmax"].astype(np.int64)
        absmax = amap[codes8] * np.repeat(scales, 256)[:codes8.size] + F32(state["nested_offset"])
    else:
        absmax = t["layer.weight.absmax"]
    qmap = t["layer.weight.quant_map"]
    return (qmap[codes].reshape(-1, 64) * absmax[:, None]).reshape(out_f, in_f)


# ---------------------------------------------------------------- GPTQ

def gptq_quantize(w, bits, group, perm):
    """Quantizer.find_params (asymmetric, range widened to include 0), then q = clamp(round(w/s) + z),
    with s already rounded to the f16 that the checkpoint stores. Groups are the columns
    perm[k·g:(k+1)·g]. Returns codes [out, in] (original column order), scales/zeros [in/g, out]."""
    out_f, in_f = w.shape
    maxq = F32(2 ** bits - 1)
    codes = np.zeros((out_f, in_f), dtype=np.int64)
    scales = np.zeros((in_f // group, out_f), dtype=np.float16)
    zeros = np.zeros((in_f // group, out_f), dtype=np.int64)
    for k in range(in_f // group):
        cols = perm[k * group:(k + 1) * group]
        x = w[:, cols]
        xmin = np.minimum(x.min(axis=1), F32(0))
        xmax = np.maximum(x.max(axis=1), F32(0))
        both0 = (xmin == 0) & (xmax == 0)
        xmin[both0], xmax[both0] = F32(-1), F32(1)
        s16 = ((xmax - xmin) / maxq).astype(np.float16)
        s = s16.astype(F32)
        z = np.clip(np.rint(-xmin / s), 0, maxq)
        codes[:, cols] = np.clip(np.rint(x / s[:, None]) + z[:, None], 0, maxq).astype(np.int64)
        scales[k], zeros[k] = s16, z.astype(np.int64)
    return codes, scales, zeros


def gptq_pack(codes, scales, zeros, g_idx, bits, fmt):
    """QuantLinear.pack: codes along `in` into qweight, zeros (z − 1 for "gptq", masked) along `out`."""
    per = 32 // bits
    maxq = 2 ** bits - 1
    out_f, in_f = codes.shape
    qweight = np.zeros((in_f // per, out_f), dtype=np.uint32)
    for i in range(in_f):
        qweight[i // per] |= codes[:, i].astype(np.uint32) << np.uint32(bits * (i % per))
    f = (zeros - 1) & maxq if fmt == "gptq" else zeros
    qzeros = np.zeros((zeros.shape[0], out_f // per), dtype=np.uint32)
    for o in range(out_f):
        qzeros[:, o // per] |= f[:, o].astype(np.uint32) << np.uint32(bits * (o % per))
    return {"layer.qweight": qweight.view(np.int32), "layer.qzeros": qzeros.view(np.int32), "layer.scales": scales,
            "layer.g_idx": g_idx.astype(np.int32)}


def gptq_decode(t, bits, fmt):
    """The consumers' dequantization: unpack, z = (f + 1) mod 2^b for "gptq", group of column i = g_idx[i]."""
    per = 32 // bits
    maxq = 2 ** bits - 1
    qweight = t["layer.qweight"].view(np.uint32)
    qzeros = t["layer.qzeros"].view(np.uint32)
    in_f, out_f = qweight.shape[0] * per, qweight.shape[1]
    codes = np.stack([(qweight >> np.uint32(bits * k)) & np.uint32(maxq) for k in range(per)], axis=1)
    codes = codes.reshape(in_f, out_f).astype(F32)
    f = np.stack([(qzeros >> np.uint32(bits * k)) & np.uint32(maxq) for k in range(per)], axis=2)
    f = f.reshape(qzeros.shape[0], out_f).astype(np.int64)
    z = ((f + 1) & maxq if fmt == "gptq" else f).astype(F32)
    g = t["layer.g_idx"].astype(np.int64)
    s = t["layer.scales"].astype(F32)
    return (s[g] * (codes - z[g])).T


def main():
    inputs = read(sys.argv[1])
    ours_dir, out_dir = sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(17)
    expected = {}
    for case, nested in BNB_CASES.items():
        t, w_hat = bnb_tensors(inputs[f"{case}.w"], nested)
        write_safetensors(f"{out_dir}/{case}.safetensors", t)
        assert np.array_equal(bnb_decode(t), w_hat)
        expected[f"{case}.w_hat"] = w_hat
        expected[f"ours.{case}.w_hat"] = bnb_decode(read_safetensors(f"{ours_dir}/{case}.safetensors"))
    for case, (bits, group, fmt, act) in GPTQ_CASES.items():
        w = inputs[f"{case}.w"]
        in_f = w.shape[1]
        perm = rng.permutation(in_f) if act else np.arange(in_f)
        g_idx = np.empty(in_f, dtype=np.int64)
        g_idx[perm] = np.arange(in_f) // group
        codes, scales, zeros = gptq_quantize(w, bits, group, perm)
        t = gptq_pack(codes, scales, zeros, g_idx, bits, fmt)
        write_safetensors(f"{out_dir}/{case}.safetensors", t)
        with open(f"{out_dir}/{case}.json", "w") as f:
            json.dump({"bits": bits, "group_size": group, "damp_percent": 0.01, "desc_act": act, "static_groups": False,
                       "sym": False, "true_sequential": True, "model_name_or_path": None, "model_file_base_name": None,
                       "quant_method": "gptq", "checkpoint_format": fmt}, f, indent=2)
        w_hat = gptq_decode(t, bits, fmt)
        expected[f"{case}.w_hat"] = w_hat
        if act:
            expected[f"{case}.y"] = (inputs["x"].astype(np.float64) @ w_hat.astype(np.float64).T).astype(F32)
        ours = f"{ours_dir}/{case}.safetensors"
        if os.path.exists(ours):
            cfg = json.load(open(f"{ours_dir}/{case}.json"))
            fmt_ours = cfg.get("checkpoint_format", "gptq")
            expected[f"ours.{case}.w_hat"] = gptq_decode(read_safetensors(ours), cfg["bits"], fmt_ours)
    write(f"{out_dir}/expected.anvt", expected)


if __name__ == "__main__":
    main()
