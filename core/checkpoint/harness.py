"""The hand-over from a quick check to a full benchmark run: the
lm-evaluation-harness command for an exported folder.

The quick probes answer "did the merge keep refusing, keep its math?" in a
minute; a paper's numbers come from lm-evaluation-harness. Every exported
folder's card, ``python -m core merge --out DIR`` and the Export tab give the
command that runs the harness's tasks matching the merge's experts on that
folder, so the long run starts from exactly what was checked. The flags are
lm-evaluation-harness 0.4's (tests/checkpoint/test_harness.py parses the
commands with its own argument parser).
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass

# the harness's tasks closest to each probe kind; it has no task that scores refusal of harmful requests
# (the LED-Merging paper used HarmBench and SORRY-Bench, outside the harness), so safety maps to none
TASKS = {"math": ("gsm8k",), "code": ("humaneval", "mbpp")}
UNSAFE_CODE = {"humaneval", "mbpp"}     # the harness runs the model's code only with --confirm_run_unsafe_code
DEFAULT_TASKS = ("gsm8k",)              # a merge of no utility expert still gets one utility check


@dataclass(frozen=True)
class Handoff:
    tasks: tuple[str, ...]
    hf: str           # transformers on this machine (CPU or one GPU)
    vllm: str         # vLLM on a GPU box
    note: str         # what the harness does not cover

    def lines(self) -> list[str]:
        return [self.hf, self.vllm]


def has_chat_template(tok_dir: str) -> bool:
    """Whether the tokenizer files in ``tok_dir`` carry a chat template (its own file, or in the config)."""
    if any(os.path.isfile(os.path.join(tok_dir, f)) for f in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        with open(os.path.join(tok_dir, "tokenizer_config.json")) as f:
            return bool(json.load(f).get("chat_template"))
    except (OSError, ValueError):
        return False


def tasks_for(kinds) -> tuple[str, ...]:
    """The harness tasks for the experts' task kinds (math, code, ...), in a fixed order, no repeats."""
    out = [t for kind in ("math", "code") if kind in set(kinds) for t in TASKS[kind]]
    return tuple(out) or DEFAULT_TASKS


def commands(folder: str, dtype: str, kinds, chat_template: bool = True) -> Handoff:
    """``lm_eval`` command lines (hf and vLLM) for ``folder`` in ``dtype`` on the tasks of ``kinds``.

    ``chat_template``: the folder's tokenizer has one (every built-in model does); instruct models are
    then evaluated as they are used, through it, few-shot examples as turns."""
    tasks = tasks_for(kinds)
    common = ["--tasks", ",".join(tasks), "--batch_size", "auto"]
    if chat_template:
        common += ["--apply_chat_template", "--fewshot_as_multiturn"]
    if UNSAFE_CODE & set(tasks):
        common += ["--confirm_run_unsafe_code"]
    out = folder.rstrip("/") + "/lm_eval"

    def line(model: str, extra: str = "") -> str:
        args = ["lm_eval", "--model", model, "--model_args", f"pretrained={folder},dtype={dtype}{extra}",
                *common, "--output_path", out]
        return " ".join(shlex.quote(a) for a in args)
    note = ("The harness has no task that scores refusal of harmful requests; "
            "the probes' refusal and over-refusal stay the quick check's" if "safety" in set(kinds) else "")
    return Handoff(tasks, line("hf"), line("vllm", ",gpu_memory_utilization=0.8"), note)


def card_section(h: Handoff) -> list[str]:
    """The model card's lines: the two commands and what they leave out."""
    lines = ["## Evaluate with lm-evaluation-harness", "",
             f"The tasks matching this merge's experts ({', '.join(h.tasks)}), on this folder:", "",
             "```bash", h.hf, "# on a GPU box, with vLLM:", h.vllm, "```"]
    if h.note:
        lines += ["", h.note + "."]
    return lines + [""]
