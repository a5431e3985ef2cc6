"""The one cache of per-model results that cost forward or backward passes:
LED's importance scores (safetensors) and ACM's mutual information (JSON).

A result is filed under a key its owner builds from what decides it: the
model's fingerprint (ModelInfo.fingerprint, from the weights' bytes), the
method, and the data as the model sees it (``data_hash``: the rows, the
tokenizer files, the knobs, and a version string to bump when a
definition changes). Hashing files rather than tokenized text means a
cache hit needs no tokenizer and no transformers import.

Files live under ``core.CACHE_DIR/<kind>/`` (read at call time, so tests
and benchmarks can point it elsewhere), written to a temp file and renamed,
so a reader never sees half a file; a read-only cache folder only costs a
recomputation next time. A memory dict sits in front, so the UI's re-merge
after a slider move reads nothing at all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from typing import Any, Callable, Iterable

import core

from .checkpoint.headers import TOKENIZER_FILES, file_digest

log = logging.getLogger(__name__)

class Cache:
    """One kind of cached result: files under CACHE_DIR/``kind`` with a memory dict in front."""

    def __init__(self, kind: str, version: str):
        self.kind, self.version = kind, version
        self._memory: dict[str, Any] = {}
        self._lock = threading.RLock()

    def folder(self) -> str:
        return os.path.join(core.CACHE_DIR, self.kind)

    def path(self, key: str, ext: str) -> str:
        return os.path.join(self.folder(), key + ext)

    def data_hash(self, items: Iterable, tokenizer_dir: str | None, **knobs) -> str:
        """Identity of a data set as a model sees it: the version, the knobs,
        the tokenizer files of ``tokenizer_dir`` (chat template included) and
        every item (any JSON value) in order."""
        h = hashlib.sha256(self.version.encode())
        h.update(json.dumps(knobs, sort_keys=True).encode())
        for name in TOKENIZER_FILES if tokenizer_dir else ():
            path = os.path.join(tokenizer_dir, name)
            if os.path.isfile(path):
                h.update(name.encode() + b"\x00" + file_digest(path))
        for item in items:
            h.update(b"\x00" + json.dumps(item, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        return h.hexdigest()[:16]

    # ------------------------------------------------------------ memory
    def remembered(self, key: str) -> Any | None:
        with self._lock:
            return self._memory.get(key)

    def remember(self, key: str, value: Any) -> Any:
        with self._lock:
            self._memory[key] = value
        return value

    def remember_new(self, key: str, make: Callable[[], Any]) -> Any:
        """The value under ``key``, made (once, under the lock) when absent."""
        with self._lock:
            hit = self._memory.get(key)
            if hit is None:
                hit = self._memory[key] = make()
            return hit

    def values(self) -> list:
        with self._lock:
            return list(self._memory.values())

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    # -------------------------------------------------------------- disk
    _reported: set = set()

    def report_broken(self, path: str, exc: BaseException) -> None:
        """Say in the log (once per file version, one line, no traceback) that a cache file could not be
        read; the caller computes the result again and its write replaces the file."""
        try:
            st = os.stat(path)
            mark = (path, st.st_size, st.st_mtime_ns)
        except OSError:
            mark = (path, None, None)
        with self._lock:
            if mark in Cache._reported:
                return
            Cache._reported.add(mark)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        log.warning("The %s cache file %s could not be read (%s); it is computed again and replaced.",
                    self.kind, path, reason)

    def write(self, key: str, ext: str, write: Callable[[str], None]) -> bool:
        """``write(temp path)`` then rename to ``path(key, ext)``; False when
        the folder cannot be written (the caller keeps its result in memory)."""
        folder = self.folder()
        try:
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            try:
                write(tmp)
                os.replace(tmp, self.path(key, ext))
                return True
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        except OSError:
            return False
