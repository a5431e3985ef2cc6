"""What the browser tests share: finding Debian's chromium (skip locally
without it, fail in CI where MERGE_EXPLORER_REQUIRE_BROWSER is set) and a
free port for an in-process demo."""
from __future__ import annotations

import os
import shutil
import socket

import pytest

REQUIRED = os.environ.get("MERGE_EXPLORER_REQUIRE_BROWSER", "") not in ("", "0")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def need(ok: bool, why: str) -> None:
    if not ok:
        if REQUIRED:
            pytest.fail(why)
        pytest.skip(why)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
