"""Reading weights one tensor at a time (the one reader)."""
from __future__ import annotations

import os

import torch

from ..errors import UserError, quoted
from .headers import ModelInfo, torch_dtype_of

class Reader:
    """The one reader of weights: one tensor (or some of its rows) at a time,
    with pread, into a buffer the caller owns or into a fresh tensor.

    Why not safetensors' memory map: it hands out views of its private map,
    so every page read stays mapped (and counts in the resident size) until
    the file is closed -- a 0.5B merge would hold all its inputs resident --
    and a write into such a view changes what the next read returns. pread
    copies straight from the page cache into a reused buffer: no page
    faults on fresh memory, nothing aliased. Where each tensor lies comes
    from the header inspect read (TensorMeta.offset); nothing parses it again.
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

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A fresh tensor the caller may keep, as stored or converted to ``dtype``."""
        t = self.read(name)
        return t.to(dtype) if dtype is not None else t

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
