"""What the browser tests share: finding Debian's chromium (skip locally
without it, fail in CI where MERGE_EXPLORER_REQUIRE_BROWSER is set), an
in-process demo on a free port, and choosing a method in the page."""
from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request

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


def launch(demo, **options) -> str:
    """Start ``demo`` on a free local port (in this process) and wait until it answers; its URL."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **options)
    return wait_until_serving(f"http://127.0.0.1:{port}/")


def wait_until_serving(url: str, seconds: float = 10.0) -> str:
    """``url`` once its Gradio API answers (or after ``seconds``)."""
    for _ in range(int(seconds * 10)):
        try:
            urllib.request.urlopen(url + "gradio_api/info", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    return url


def choose_method(page, label: str, merge_method: str) -> None:
    """Pick a method in the Merge tab and wait until the server has applied it.

    The switch resets the sliders to the method's defaults when its answer
    arrives; a slider moved before that (easy on a loaded or cold machine)
    is reset again, so tests wait for the live YAML to name the method.
    """
    from playwright.sync_api import expect
    page.get_by_role("tab", name="Merge", exact=True).click()
    page.locator("#method input").click()
    page.get_by_role("option", name=label, exact=True).click()
    page.get_by_role("tab", name="Export", exact=True).click()
    expect(page.locator("#yaml")).to_contain_text(f"merge_method: {merge_method}")
    page.get_by_role("tab", name="Merge", exact=True).click()


class ServerLog:
    """What the in-process server writes to stderr or logs while a test runs,
    so a test can fail on a "Traceback" the page never shows (Gradio prints
    its own input errors there; our guard logs unexpected errors)."""

    def __init__(self):
        import logging
        import sys
        self.chunks: list[str] = []
        log = self

        class Tee:
            def __init__(self, inner):
                self.inner = inner

            def write(self, s):
                log.chunks.append(s)
                return self.inner.write(s)

            def __getattr__(self, name):
                return getattr(self.inner, name)

        class Handler(logging.Handler):
            def emit(self, record):
                log.chunks.append(self.format(record) + "\n")

        self._stderr, self._handler = sys.stderr, Handler(logging.WARNING)
        self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        sys.stderr = Tee(sys.stderr)
        logging.getLogger().addHandler(self._handler)

    def text(self) -> str:
        return "".join(self.chunks)

    def close(self) -> None:
        import logging
        import sys
        sys.stderr = self._stderr
        logging.getLogger().removeHandler(self._handler)


def no_error_toast(page) -> None:
    """Fail on any red toast the page shows (a gr.Error)."""
    toasts = page.locator(".toast-body.error")
    assert toasts.count() == 0, toasts.all_inner_texts()
