"""Reads IN with the `safetensors` package (which validates it) and re-serializes what it
read, with IN's metadata, to OUT. safetensors_test.cpp compares OUT's bytes with IN's."""
import ctypes
import json
import struct
import sys

import safetensors

DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I32": "int32",
          "I64": "int64", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def main(src, dst):
    raw = open(src, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    metadata = json.loads(raw[8:8 + n]).get("__metadata__")
    keep, specs = [], {}
    for name, t in safetensors.deserialize(raw):
        buf = (ctypes.c_char * max(len(t["data"]), 1)).from_buffer_copy(bytes(t["data"]) or b"\0")
        keep.append(buf)
        specs[name] = safetensors.TensorSpec(dtype=DTYPES[t["dtype"]], shape=t["shape"],
                                             data_ptr=ctypes.addressof(buf), data_len=len(t["data"]))
    with open(dst, "wb") as f:
        f.write(safetensors.serialize(specs, metadata=metadata))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
