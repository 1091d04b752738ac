"""A fast reader for the GGUF container: metadata, tensor directory, memory-mapped tensor bytes.

Why not `gguf.GGUFReader` for this part: it builds a numpy view per array element, which takes ~6 s
for a 49k-token vocabulary on this machine, longer than loading the weights. This reader parses the
header with `struct` (~0.1 s) and leaves tensor bytes memory-mapped. Tensor types, block sizes and
dequantization still come from the `gguf` package.

Layout (little-endian, GGUF v2/v3): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
kv_count x (string key, u32 type, value), tensor_count x (string name, u32 n_dims, u64 dims[n_dims]
fastest-first, u32 ggml_type, u64 offset), padding to `general.alignment` (default 32), tensor data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP_DTYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
              7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """Not a GGUF file, or a truncated / corrupt one."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # slowest-first (numpy/torch order)
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFFormatError("unexpected end of file in the GGUF header")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.unpack("<Q")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array()
        raise GGUFFormatError(f"unknown GGUF value type {vtype}")

    def array(self) -> Any:
        etype, count = self.unpack("<I"), self.unpack("<Q")
        if etype in _NP_DTYPES:  # numeric arrays in one read
            dt = np.dtype(_NP_DTYPES[etype])
            if self.pos + dt.itemsize * count > len(self.buf):
                raise GGUFFormatError("unexpected end of file in a GGUF metadata array")
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
            self.pos += dt.itemsize * count
            return arr.tolist()
        return [self.value(etype) for _ in range(count)]


def _tensor_nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return int(np.prod(shape)) // block * type_size


class GGUFContainer:
    """Metadata dict + tensor directory of a GGUF file; tensor bytes are read lazily via memmap."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._mm))
        if bytes(cur.buf[:4]) != b"GGUF":
            raise GGUFFormatError(f"{self.path.name} is not a GGUF file (bad magic)")
        cur.pos = 4
        self.version = cur.unpack("<I")
        if self.version not in (2, 3):
            raise GGUFFormatError(f"{self.path.name}: unsupported GGUF version {self.version}")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.unpack("<I"))
        raw = [self._tensor_header(cur) for _ in range(n_tensors)]
        align = int(self.metadata.get("general.alignment", 32))
        data_start = (cur.pos + align - 1) // align * align
        self.tensors = {name: TensorInfo(name, shape, t, data_start + off, _tensor_nbytes(t, shape))
                        for name, shape, t, off in raw}
        for info in self.tensors.values():
            if info.offset + info.nbytes > len(self._mm):
                raise GGUFFormatError(f"{self.path.name}: tensor {info.name} runs past the end of the file")

    @staticmethod
    def _tensor_header(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
        name = cur.string()
        dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
        ggml_type, offset = cur.unpack("<I"), cur.unpack("<Q")
        return name, tuple(reversed(dims)), ggml_type, offset

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes as uint8 [rows..., bytes_per_row] (the layout gguf.quants.dequantize takes)."""
        info = self.tensors[name]
        flat = self._mm[info.offset:info.offset + info.nbytes]
        rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
        return flat.reshape(*info.shape[:-1], info.nbytes // rows) if len(info.shape) > 1 else flat

    def dequantize(self, name: str) -> np.ndarray:
        """float32 array of the tensor's shape (slowest-first)."""
        from gguf import quants
        from gguf.constants import GGMLQuantizationType

        info = self.tensors[name]
        qtype = GGMLQuantizationType(info.ggml_type)
        try:
            arr = quants.dequantize(self.raw(name), qtype)
        except NotImplementedError as e:
            raise GGUFFormatError(f"{self.path.name}: tensor {name} has type {qtype.name}, "
                                  "which cannot be dequantized") from e
        # F32 tensors come back as read-only views of the memmap; torch wants writable memory.
        return np.require(arr, dtype=np.float32, requirements=["W", "C"]).reshape(info.shape)
