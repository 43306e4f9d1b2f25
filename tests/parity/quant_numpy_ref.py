"""The quantized formats of kernels/quant.h in numpy, the oracle for tests/parity/quant_numpy_test.cpp,
written from bitsandbytes' algorithm (functional.py create_dynamic_map / quantize_4bit /
quantize_blockwise, the pure-torch backend's bucketize on midpoints) and AutoAWQ's
pseudo_quantize_tensor, all in float32 as the references compute.

usage: quant_numpy_ref.py INPUTS.anvt OUTPUTS.anvt
INPUTS: `nf4.w`, `dq.w`, `dqties.w` (NF4, block 64; dq*: double-quantized), `int4.w` (group 32),
`int2.w` (group 16), each [out, in] f32.
OUTPUTS per case: `packed` (bytes as i32), and `absmax`, or `absmax_codes` (i32), `absmax_scales`,
`offset` [1]; or `scales`, `zeros` [out, in / group]; `w_hat` (the decode) [out, in].
`dyn.numpy`: the dynamic map built here; `dyn.torch`: bitsandbytes' construction run in torch.
"""
import sys

import numpy as np
import torch

from tensor_file import read, write

F32 = np.float32

# ALGORITHMS.md §9 (bitsandbytes get_4bit_type('nf4')).
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=F32)


def dynamic_map_numpy():
    """create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) with exactly rounded
    linspace points; means and scaled values in f32 like the reference's f32 tensors."""
    data = []
    for i in range(7):
        bounds = np.linspace(0.1, 1.0, 2 ** i + 1).astype(F32)
        means = (bounds[:-1] + bounds[1:]) / F32(2)
        scaled = F32(10.0 ** (i - 6)) * means
        data += list(scaled) + list(-scaled)
    data += [F32(0), F32(1)]
    assert len(data) == 256
    return np.sort(np.array(data, dtype=F32))


def dynamic_map_torch():
    """bitsandbytes' own construction (f32 torch.linspace), for the record."""
    data = []
    for i in range(7):
        b = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        m = (b[:-1] + b[1:]) / 2.0
        data += ((10 ** (-6 + i)) * m).tolist() + (-(10 ** (-6 + i)) * m).tolist()
    data += [0, 1.0]
    data.sort()
    return np.array(data, dtype=F32)


def nearest(table, x):
    """torch.bucketize(x, midpoints, right=False): the number of midpoints below x (ties: lower code)."""
    mids = (table[:-1] + table[1:]) / F32(2)
    return np.searchsorted(mids, x, side="left")


def blockwise_codes(values, table, block):
    """absmax per block, code = nearest(x * (1 / max(absmax, 1e-38)) clipped to [-1, 1])."""
    n = values.size
    codes = np.empty(n, dtype=np.int64)
    absmax = np.empty((n + block - 1) // block, dtype=F32)
    for b in range(absmax.size):
        v = values[b * block:(b + 1) * block]
        absmax[b] = np.abs(v).max()
        inv = F32(1) / np.maximum(absmax[b], F32(1e-38))
        codes[b * block:(b + 1) * block] = nearest(table, np.clip(v * inv, F32(-1), F32(1)))
    return codes, absmax


def pack(codes, bits):
    per = 8 // bits
    c = codes.reshape(-1, per)
    out = np.zeros(c.shape[0], dtype=np.int64)
    for k in range(per):
        out |= c[:, k] << (8 - bits * (k + 1))
    return out.astype(np.int32)


def quantize_nf4(w, double_quant, dyn):
    codes, absmax = blockwise_codes(w.reshape(-1), NF4, 64)
    out = {"packed": pack(codes, 4)}
    if not double_quant:
        out["absmax"] = absmax
        amax_hat = absmax
    else:
        offset = F32(absmax.astype(np.float64).mean())
        acodes, ascales = blockwise_codes(absmax - offset, dyn, 256)
        out.update(absmax_codes=acodes.astype(np.int32), absmax_scales=ascales, offset=np.array([offset], F32))
        amax_hat = dyn[acodes] * np.repeat(ascales, 256)[:absmax.size] + offset
    out["w_hat"] = (NF4[codes].reshape(-1, 64) * amax_hat[:, None]).reshape(w.shape)
    return out


def quantize_groupwise(w, bits, group):
    """AutoAWQ pseudo_quantize_tensor (zero_point=True) in f32."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group)
    max_val, min_val = g.max(axis=2, keepdims=True), g.min(axis=2, keepdims=True)
    max_int = F32(2 ** bits - 1)
    scales = np.maximum(max_val - min_val, F32(1e-5)) / max_int
    zeros = np.clip(-np.rint(min_val / scales), F32(0), max_int) + F32(0)
    q = np.clip(np.rint(g / scales) + zeros, F32(0), max_int)
    w_hat = (q - zeros) * scales
    return {"packed": pack(q.reshape(-1).astype(np.int64), bits), "scales": scales.reshape(rows, -1),
            "zeros": zeros.reshape(rows, -1), "w_hat": w_hat.reshape(rows, cols)}


def main():
    inputs = read(sys.argv[1])
    dyn = dynamic_map_numpy()
    results = {"nf4": quantize_nf4(inputs["nf4.w"], False, dyn), "dq": quantize_nf4(inputs["dq.w"], True, dyn),
               "dqties": quantize_nf4(inputs["dqties.w"], True, dyn),
               "int4": quantize_groupwise(inputs["int4.w"], 4, 32), "int2": quantize_groupwise(inputs["int2.w"], 2, 16)}
    out = {f"{case}.{k}": v for case, r in results.items() for k, v in r.items()}
    out["dyn.numpy"] = dyn
    out["dyn.torch"] = dynamic_map_torch()
    write(sys.argv[2], out)


if __name__ == "__main__":
    main()
