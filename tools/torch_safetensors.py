"""A minimal safetensors reader and writer over struct and json, independent of the library and of the
`safetensors` package (which PyTorch 1.13 does not ship): 8-byte little-endian header length, JSON header of
name -> {dtype, shape, data_offsets}, then the raw little-endian data."""
import json
import struct

import numpy as np
import torch

_DTYPES = {torch.float64: ("F64", "<f8"), torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}
_NUMPY = {name: np.dtype(code) for name, code in _DTYPES.values()}


def write(path, tensors, metadata=None):
    """Writes {name: tensor} in order of name, the header padded with spaces to a multiple of 8 bytes."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        dtype, code = _DTYPES[tensor.dtype]
        data = tensor.numpy().astype(code, copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for chunk in chunks:
            f.write(chunk)


def read(path):
    """Returns ({name: tensor}, metadata), checking that the offsets cover the data exactly."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors, end = {}, 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        begin, stop = info["data_offsets"]
        assert begin == end, f"{name}: data_offsets {info['data_offsets']} do not follow {end}"
        array = np.frombuffer(data[begin:stop], dtype=_NUMPY[info["dtype"]]).reshape(info["shape"])
        tensors[name] = torch.from_numpy(array.astype(array.dtype.newbyteorder("=")).copy())
        end = stop
    assert end == len(data), f"{len(data) - end} bytes after the last tensor"
    return tensors, metadata
