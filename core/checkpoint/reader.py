"""Reading weights one tensor at a time."""
from __future__ import annotations

import os

import torch

from ..errors import UserError, quoted
from .headers import ModelInfo, torch_dtype_of

class TensorReader:
    """Per-tensor access to a model's weights, memory-mapped.

    Opening a shard is cheap (safetensors mmaps it); ``get`` materialises one
    tensor. Readers are reused across tensors so each file is opened once.
    """

    def __init__(self, info: ModelInfo):
        from safetensors import safe_open
        self.info = info
        self._open = {}
        self._safe_open = safe_open

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        meta = self.info.tensors[name]
        h = self._open.get(meta.file)
        if h is None:
            try:
                h = self._safe_open(meta.file, framework="pt", device="cpu")
            except Exception as exc:
                raise UserError(f"Cannot read {quoted(meta.file)} ({exc}).")
            self._open[meta.file] = h
        try:
            t = h.get_tensor(name)
        except Exception as exc:
            raise UserError(f"Tensor {quoted(name)} of {quoted(self.info.ref)} could not be read; the file may be corrupt ({exc}).")
        return t.to(dtype) if dtype is not None else t

    def close(self) -> None:
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FileReader:
    """Reads one tensor at a time with pread into a buffer the caller owns.

    Why not the memory map of models.TensorReader: safetensors hands out
    views of its private map, so every page read stays mapped (and counts
    in the resident size) until the file is closed -- a 0.5B merge would
    hold all its inputs resident -- and a write into such a view changes
    what the next read returns. pread copies straight from the page cache
    into a reused buffer: no page faults on fresh memory, nothing aliased.
    """

    def __init__(self, info: ModelInfo):
        self.info = info
        self._fds: dict[str, int] = {}

    def _locate(self, name: str) -> tuple[int, int, int]:
        """(open file descriptor, first byte, byte count) of a tensor, from the
        header as inspect read it (checked there; no second parse)."""
        meta = self.info.tensors[name]
        fd = self._fds.get(meta.file)
        if fd is None:
            try:
                fd = os.open(meta.file, os.O_RDONLY)
            except OSError as exc:
                raise UserError(f"Cannot read {quoted(meta.file)} ({exc.strerror or exc}).")
            self._fds[meta.file] = fd
        return fd, meta.offset, meta.nbytes

    def read(self, name: str, staging: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor as stored (dtype, shape); in ``staging`` (uint8, CPU) when given."""
        meta = self.info.tensors[name]
        return self.read_rows(name, 0, meta.shape[0] if meta.shape else 1, staging)

    def read_rows(self, name: str, a: int, b: int, staging: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [a, b) of the tensor as stored (the whole tensor for a scalar)."""
        meta = self.info.tensors[name]
        fd, start, nbytes = self._locate(name)
        shape = tuple(meta.shape)
        row = nbytes // shape[0] if shape and shape[0] else nbytes
        size = (b - a) * row if shape else nbytes
        raw = staging[:size] if staging is not None else torch.empty(size, dtype=torch.uint8)
        view = memoryview(raw.numpy())
        done, off = 0, start + (a * row if shape else 0)
        while done < size:   # one read returns at most ~2 GiB on Linux
            got = os.preadv(fd, [view[done:]], off + done)
            if got <= 0:
                raise UserError(f"Tensor {quoted(name)} of {quoted(self.info.ref)} could not be read; the file is truncated.")
            done += got
        return raw.view(torch_dtype_of(meta.dtype)).view(((b - a),) + shape[1:] if shape else shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
