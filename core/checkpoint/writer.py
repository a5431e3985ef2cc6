"""Writing merged weights: safetensors shards streamed as they are computed."""
from __future__ import annotations

import json
import os

import torch

from .headers import DTYPE_BYTES

_ST_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}


class ShardWriter:
    """Streams tensors into safetensors shards planned up front.

    Each shard's header (names, dtypes, shapes, offsets) is written when its
    first tensor arrives, then every tensor's bytes are appended in order.
    """

    def __init__(self, folder: str, layout: list[tuple[str, str, tuple[int, ...]]], shard_size: int):
        self.folder = folder
        self.shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, st, shape in layout:
            n = _numel(shape) * DTYPE_BYTES[st]
            if self.shards[-1] and size + n > shard_size:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, st, shape, n))
            size += n
        total = len(self.shards)
        self.files = ["model.safetensors"] if total == 1 else \
            [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
        self._where = {t[0]: (i, j) for i, s in enumerate(self.shards) for j, t in enumerate(s)}
        self._shard = -1
        self._next = 0
        self._fh = None
        self._written = 0
        self.total_size = sum(t[3] for s in self.shards for t in s)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        i, j = self._where[name]
        if i != self._shard:
            self._close()
            self._open(i)
        if j != self._next:
            raise RuntimeError(f"tensor {name} arrived out of the planned order")
        _, st, shape, n = self.shards[i][j]
        t = tensor.detach().to("cpu").contiguous()
        if tuple(t.shape) != tuple(shape) or _ST_NAMES.get(t.dtype) != st:
            raise RuntimeError(f"tensor {name} is {t.dtype}{list(t.shape)}, planned {st}{list(shape)}")
        if n:
            buf = t.reshape(-1).view(torch.uint8).numpy()
            self._fh.write(memoryview(buf))
        self._next += 1
        self._written += 1

    def _open(self, i: int) -> None:
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, st, shape, n in self.shards[i]:
            header[name] = {"dtype": st, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)   # safetensors aligns the data to 8 bytes
        self._fh = open(os.path.join(self.folder, self.files[i]), "wb")
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._shard, self._next = i, 0

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> None:
        self._close()
        if self._written != len(self._where):
            raise RuntimeError(f"{len(self._where) - self._written} planned tensors were never written")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size},
                     "weight_map": {t[0]: self.files[i] for i, s in enumerate(self.shards) for t in s}}
            with open(os.path.join(self.folder, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=2)

    def abort(self) -> None:
        self._close()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
