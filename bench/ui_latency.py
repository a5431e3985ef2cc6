"""How long the app takes, as a person in the browser sees it (issue #17's latency targets).

Not a test: it launches the app in this process on a free port, drives
Debian's chromium headless through Playwright, and times from the user's
action (click, release) to the moment the page shows the result (the status
line of that step changes to its new text; every status line states a wall
time, so it changes on every run). Each case is repeated and the median
printed, with the machine's load average before and after (the machine is
shared: other people's jobs stretch wall times).

    python bench/ui_latency.py [--repeat 5] [--json out.json]

Cases (targets from issue #17):
  first_merge   a new session's first merge (default method, LED), button to status   <= 3 s
  release       after a merge, an LED r typed and released, to the new status         <= 0.5 s
  acm_t         ACM merged once (activations cached), t changed, to the new status    <= 0.5 s
  look          the Look tab opened after a merge, to its new status and the provenance chart drawn   <= 2 s
  probes        'Run probes' at 24 prompts per suite (merged, base, 2 parents)       <= 3 s
                (first run of a session: nothing cached) and again (parents cached)
  roundtrip     the cheapest event there is (an example prompt into the prompt box): what any
                click costs on this page before any work is done (the floor under the others)

    python bench/ui_latency.py --cold [--repeat 3]

  cold_first_merge, cold_probes_first: a fresh `python app.py` each time (as a Space starts), the page
                opened as soon as it answers: its first merge (<= 1 s) and first probes (<= 3 s; issue #26)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NO_PROXY"] = "127.0.0.1,localhost"

from core.zoo.data import EXAMPLE_PROMPTS  # noqa: E402

# the new text has arrived when the element holds the wanted word and no longer holds the old text
# (while the step runs, Gradio's progress overlay shows its timer next to the OLD text)
WAIT_JS = """([sel, old, want]) => {
    const e = document.querySelector(sel);
    if (!e) return false;
    const t = e.tagName === "TEXTAREA" ? e.value : e.innerText;
    return t.includes(want) && (old.trim() === "" ? true : !t.includes(old.trim()));
}"""


def text(page, sel: str) -> str:
    return page.evaluate("(s) => { const e = document.querySelector(s); "
                         "return e ? (e.tagName === 'TEXTAREA' ? e.value : e.innerText) : ''; }", sel)


SERVER: dict[str, list[float]] = {}
_WALL = re.compile(r"in (\d+(?:\.\d+)?) s")


def timed(page, act, sel: str, want: str, case: str = "", timeout_ms: int = 180_000, also: str | None = None) -> float:
    """Seconds from act() until the element ``sel`` shows new text containing ``want`` (and the JS
    predicate ``also`` holds); the wall time the server states in that text is kept under ``case``
    (what the browser adds is the difference)."""
    old = text(page, sel)
    t0 = time.perf_counter()
    act()
    page.wait_for_function(WAIT_JS, arg=[sel, old, want], timeout=timeout_ms, polling="raf")
    if also:
        page.wait_for_function(also, timeout=timeout_ms, polling="raf")
    dt = time.perf_counter() - t0
    m = _WALL.search(text(page, sel))
    if case and m:
        SERVER.setdefault(case, []).append(float(m.group(1)))
    return dt


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def choose(page, label: str, merge_method: str) -> None:
    from playwright.sync_api import expect
    tab(page, "Merge")
    page.locator("#method input").click()
    page.get_by_role("option", name=label, exact=True).click()
    tab(page, "Export")
    expect(page.locator("#yaml")).to_contain_text(f"merge_method: {merge_method}", timeout=60_000)
    tab(page, "Merge")


def release(page, elem: str, value: float) -> None:
    box = page.locator(f"#{elem} input[type=number]")
    box.fill(f"{value:g}")
    box.press("Tab")


def new_page(browser, url):
    from playwright.sync_api import expect
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    expect(page.locator("#model-report")).to_contain_text("Compatible", timeout=120_000)
    return ctx, page


def run(repeat: int) -> dict:
    from playwright.sync_api import sync_playwright
    from tests.ui._browser import chromium, launch
    from ui.app import build_demo, launch_options
    demo = build_demo()
    url = launch(demo, **launch_options())
    res: dict[str, list[float]] = {k: [] for k in ("first_merge", "release", "acm_t", "look", "probes_first",
                                                   "probes_again", "roundtrip")}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            for k in range(repeat):
                ctx, page = new_page(browser, url)
                tab(page, "Merge")
                res["first_merge"].append(timed(page, lambda: page.locator("#merge-btn").click(), "#merge-status",
                                                "Merged", "first_merge"))
                for j in range(2):     # LED's r of the math expert, typed and released
                    res["release"].append(timed(page, lambda j=j: release(page, "led-mask_ratio-2", 0.3 + 0.05 * j + 0.01 * k),
                                                "#merge-status", "Merged", "release"))
                # the Look tab opened after the merge and the releases: its pictures are drawn then (not on every
                # release, while nobody looks); timed until the status is new and the provenance chart, re-sent
                # after every merge, is drawn
                res["look"].append(timed(page, lambda: tab(page, "Look"), "#look-status", "Pictures updated", "look",
                                         also="() => (document.querySelector('#plot-prov_share') || {innerText: ''})"
                                              ".innerText.includes('Where the merged change came from')"))
                tab(page, "Probe")
                page.locator("#limit input[type=number]").fill("24")
                page.locator("#limit input[type=number]").press("Tab")
                res["probes_first"].append(timed(page, lambda: page.locator("#probe-btn").click(), "#probe-status",
                                                 "Probed", "probes_first"))
                res["probes_again"].append(timed(page, lambda: page.locator("#probe-btn").click(), "#probe-status",
                                                 "Probed", "probes_again"))
                tab(page, "Chat")
                for kind in ("math", "code", "benign"):    # each example prompt, as the family defines it
                    res["roundtrip"].append(timed(page, lambda kind=kind: page.locator(f"#ex-{kind}").click(),
                                                  "#prompt textarea", EXAMPLE_PROMPTS[kind]))
                choose(page, "ACM (activation-guided)", "acm")
                timed(page, lambda: page.locator("#merge-btn").click(), "#merge-status", "ACM")
                for j in range(2):
                    res["acm_t"].append(timed(page, lambda j=j: release(page, "acm-temperature", 0.5 + 0.1 * j + 0.01 * k),
                                              "#merge-status", "ACM", "acm_t"))
                ctx.close()
            browser.close()
    finally:
        demo.close()
    return res


def run_cold(repeat: int) -> dict:
    """Each time a fresh ``python app.py`` (as a Space starts): the page opened as soon as the server
    answers, the first merge, then the first probes at 24 prompts per suite (issue #26: <= 1 s, <= 3 s)."""
    import subprocess
    from playwright.sync_api import sync_playwright
    from tests.ui._browser import chromium, free_port, wait_until_serving
    res: dict[str, list[float]] = {"cold_first_merge": [], "cold_probes_first": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        for _ in range(repeat):
            port = free_port()
            env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py")], env=env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = wait_until_serving(f"http://127.0.0.1:{port}/", seconds=60)
                ctx, page = new_page(browser, url)
                tab(page, "Merge")
                res["cold_first_merge"].append(timed(page, lambda: page.locator("#merge-btn").click(),
                                                     "#merge-status", "Merged", "cold_first_merge"))
                tab(page, "Probe")
                page.locator("#limit input[type=number]").fill("24")
                page.locator("#limit input[type=number]").press("Tab")
                res["cold_probes_first"].append(timed(page, lambda: page.locator("#probe-btn").click(),
                                                      "#probe-status", "Probed", "cold_probes_first"))
                ctx.close()
            finally:
                proc.terminate()
                proc.wait(30)
        browser.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="sessions (each: 1 first merge, 2 releases, ...)")
    ap.add_argument("--cold", action="store_true", help="only a fresh `python app.py` per repeat: its first "
                    "merge and first probes")
    ap.add_argument("--json", help="write every timing here")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.time()
    res = run_cold(args.repeat) if args.cold else run(args.repeat)
    load1 = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))} UTC, {os.cpu_count()} CPUs, "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after, {time.time() - t0:.0f} s in all")
    targets = {"first_merge": 3, "release": 0.5, "acm_t": 0.5, "look": 2, "probes_first": 3, "probes_again": 3,
               "roundtrip": 0, "cold_first_merge": 1, "cold_probes_first": 3}
    print(f"{'case':<14}{'median s':>10}{'server s':>10}{'target s':>10}  runs (browser)")
    for k, v in res.items():
        srv = statistics.median(SERVER[k]) if SERVER.get(k) else float("nan")
        print(f"{k:<14}{statistics.median(v):>10.2f}{srv:>10.2f}{targets[k]:>10g}  {', '.join(f'{x:.2f}' for x in v)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": [load0, load1], "runs": res, "server": SERVER}, f, indent=1)


if __name__ == "__main__":
    main()
