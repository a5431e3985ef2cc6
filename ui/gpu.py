"""The app's GPU work, as ZeroGPU needs it: pure functions (inputs in, results out).

On a ZeroGPU Space a function under ``@spaces.GPU`` runs in a forked worker:
whatever it changes in memory -- a session's transcripts, a board's scores, a
cache -- is lost when it returns. So only these functions are decorated, and
they change nothing: the handlers (ui/tabs) merge, read and write the session
in the main process and call them for the generation alone.

``MERGE_EXPLORER_GPU_FORK=1`` runs each of them in a forked child whose
memory is thrown away, as ZeroGPU does (tests/test_serving.py): a handler that
relied on a change made inside would lose it there too.
"""
from __future__ import annotations

import functools
import inspect
import os
import pickle
import signal
import struct

from core import service


def _zero_gpu(duration: int):
    """``spaces.GPU`` on a ZeroGPU Space (the package is there only on one), else None."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return None
    try:
        import spaces  # type: ignore
        return spaces.GPU(duration=duration)
    except Exception:
        return None


def gpu(duration: int = 60):
    """``spaces.GPU`` on a ZeroGPU Space; a forked child when ``MERGE_EXPLORER_GPU_FORK=1`` (read at each
    call, so a test can turn it on); else the function itself."""
    def deco(fn):
        zero = _zero_gpu(duration)
        direct = zero(fn) if zero else fn
        forked = _forked(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            use = forked if os.environ.get("MERGE_EXPLORER_GPU_FORK") == "1" else direct
            return use(*args, **kwargs)
        return call
    return deco


# ----------------------------------------------- ZeroGPU's fork, for tests
def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj)
    os.write(fd, struct.pack("<Q", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int):
    head = _read(fd, 8)
    if not head:
        return None
    return pickle.loads(_read(fd, struct.unpack("<Q", head)[0]))


def _read(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return buf
        buf += chunk
    return buf


def _child(fn, args, kwargs, w: int) -> None:
    try:
        if inspect.isgeneratorfunction(fn):
            for item in fn(*args, **kwargs):
                _send(w, ("item", item))
            _send(w, ("done", None))
        else:
            _send(w, ("done", fn(*args, **kwargs)))
    except BaseException as exc:   # the parent raises it: the worker's error is the handler's
        try:
            _send(w, ("error", exc))
        except Exception:
            _send(w, ("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        os._exit(0)


def _start(fn, args, kwargs) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(fn, args, kwargs, w)
    os.close(w)
    return pid, r


def _finish(pid: int, r: int, kill: bool = False) -> None:
    if kill:
        os.kill(pid, signal.SIGKILL)
    os.close(r)
    os.waitpid(pid, 0)


def _forked(fn):
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            pid, r = _start(fn, args, kwargs)
            done = False
            try:
                while True:
                    msg = _recv(r)
                    if msg is None:
                        raise RuntimeError("the GPU worker ended without an answer")
                    kind, value = msg
                    if kind == "item":
                        yield value
                        continue
                    done = True
                    if kind == "error":
                        raise value
                    return
            finally:
                _finish(pid, r, kill=not done)   # closed early (Stop, a cancel): the worker goes
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        pid, r = _start(fn, args, kwargs)
        try:
            msg = _recv(r)
        finally:
            _finish(pid, r)
        if msg is None:
            raise RuntimeError("the GPU worker ended without an answer")
        kind, value = msg
        if kind == "error":
            raise value
        return value
    return call


# ------------------------------------------------------------ the GPU work
@gpu(duration=120)
def probe_model(model, tokenizer, suites: str, limit: int, progress=None) -> dict:
    """Probe results of one loaded model (the live merge)."""
    return service.probe(model, suites, limit, tokenizer=tokenizer, progress=progress)


@gpu(duration=120)
def probe_models(jobs: list[tuple], suites: str, limit: int, progress=None) -> list[dict]:
    """Probe results of loaded models [(model, tokenizer, name)], in order (service.probe_references
    remembers them, in the main process)."""
    return service.probe_each(jobs, suites, limit, progress)


@gpu(duration=120)
def stream_chat(session, prompt: str, max_new_tokens: int):
    """The chat's answers as they grow (chat.Answers: one string per column, and its error); the
    session's history is not touched (the handler records the exchange)."""
    yield from session.stream(prompt, max_new_tokens=max_new_tokens, record=False)
