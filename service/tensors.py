"""numpy arrays <-> streamed `Tensor` pieces (raw little-endian bytes, row-major)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from .. import proto

#: Bytes of tensor data per message: the top of the design's 256 KiB - 1 MiB range (fewer, larger
#: messages cost less per byte in grpcio), well under the 8 MiB message limit.
PIECE_BYTES = 1024 * 1024

_TO_WIRE = {
    np.dtype("float32"): "FLOAT32",
    np.dtype("float16"): "FLOAT16",
    np.dtype("int64"): "INT64",
    np.dtype("int32"): "INT32",
}
_FROM_WIRE = {proto.DType[name]: dtype for dtype, name in _TO_WIRE.items()}


def tensor_pieces(name: str, array: np.ndarray, piece_bytes: int = PIECE_BYTES) -> Iterator:
    """`proto.Tensor` messages carrying `array` in pieces of at most `piece_bytes` data bytes."""
    array = np.asarray(array)
    if array.dtype not in _TO_WIRE:
        raise TypeError(f"no wire dtype for {array.dtype} (tensor {name!r})")
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    dtype = proto.DType[_TO_WIRE[array.dtype]]
    shape = list(array.shape)
    for offset in range(0, max(len(data), 1), piece_bytes):
        yield proto.Tensor(
            name=name,
            dtype=dtype,
            shape=shape,
            data=data[offset : offset + piece_bytes],
            offset=offset,
            total_bytes=len(data),
        )


def assemble(pieces: Iterable) -> dict[str, np.ndarray]:
    """Join streamed pieces back into arrays by name, checking that no byte is missing or repeated."""
    parts: dict[str, list] = {}
    for piece in pieces:
        parts.setdefault(piece.name, []).append(piece)
    out = {}
    for name, chunks in parts.items():
        chunks.sort(key=lambda c: c.offset)
        first = chunks[0]
        dtype = _FROM_WIRE.get(first.dtype)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: unknown dtype {first.dtype}")
        data = bytearray(first.total_bytes)  # one writable buffer, filled in place
        expected = 0
        for c in chunks:
            if c.offset != expected or expected + len(c.data) > len(data):
                raise ValueError(
                    f"tensor {name!r}: piece at byte {c.offset} of {len(data)}, expected {expected}"
                )
            data[expected : expected + len(c.data)] = c.data
            expected += len(c.data)
        if expected != first.total_bytes:
            raise ValueError(f"tensor {name!r}: got {expected} bytes of {first.total_bytes}")
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(tuple(first.shape))
        out[name] = array.astype(dtype, copy=False)  # a copy only on big-endian machines
    return out
