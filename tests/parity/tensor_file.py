"""Reads and writes the ANVT named-tensor files of tests/support/tensor_file.h."""
import struct

import numpy as np

_DTYPES = {0: np.float32, 1: np.int32}


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"ANVT":
        raise ValueError(f"{path}: not an ANVT tensor file")
    (count,) = struct.unpack_from("<I", data, 4)
    pos, out = 8, {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<I", data, pos)
        pos += 4
        name = data[pos:pos + name_len].decode()
        pos += name_len
        dtype, ndim = struct.unpack_from("<II", data, pos)
        pos += 8
        shape = struct.unpack_from(f"<{ndim}q", data, pos)
        pos += 8 * ndim
        n = int(np.prod(shape)) if ndim else 1
        arr = np.frombuffer(data, dtype=_DTYPES[dtype], count=n, offset=pos).reshape(shape)
        pos += 4 * n
        out[name] = arr.copy()
    return out


def write(path, tensors):
    with open(path, "wb") as f:
        f.write(b"ANVT")
        f.write(struct.pack("<I", len(tensors)))
        for name, arr in tensors.items():
            arr = np.ascontiguousarray(arr)
            code = 1 if arr.dtype == np.int32 else 0
            arr = arr.astype(np.int32 if code else np.float32)
            encoded = name.encode()
            f.write(struct.pack("<I", len(encoded)))
            f.write(encoded)
            f.write(struct.pack("<II", code, arr.ndim))
            f.write(struct.pack(f"<{arr.ndim}q", *arr.shape))
            f.write(arr.tobytes())
