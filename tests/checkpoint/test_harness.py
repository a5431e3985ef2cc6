"""The hand-over to lm-evaluation-harness: the commands an exported folder's card, the CLI and the Export tab
give, parsed by the harness's own argument parser (lm-eval==0.4.13, requirements-test.txt)."""
from __future__ import annotations

import os
import shlex
import sys

import pytest

from core.checkpoint import harness


def parse(line: str):
    """What `lm_eval` would run: its CLI, as the console script calls it (legacy form: 'run' inserted)."""
    from lm_eval._cli.harness import HarnessCLI
    argv = shlex.split(line)
    assert argv[0] == "lm_eval"
    old = sys.argv
    sys.argv = ["lm_eval", *argv[1:]]
    try:
        return HarnessCLI().parse_args()
    finally:
        sys.argv = old


def test_a_math_and_code_merge_hands_over_gsm8k_humaneval_and_mbpp(tmp_path):
    folder = str(tmp_path / "my merge")            # a space in the path survives the quoting
    h = harness.commands(folder, "bfloat16", ["safety", "math", "code"])
    assert h.tasks == ("gsm8k", "humaneval", "mbpp")
    hf, vllm = parse(h.hf), parse(h.vllm)
    assert hf.command == "run" and hf.model == "hf" and vllm.model == "vllm"
    assert hf.model_args == {"pretrained": folder, "dtype": "bfloat16"}
    assert vllm.model_args == {"pretrained": folder, "dtype": "bfloat16", "gpu_memory_utilization": 0.8}
    assert hf.tasks == ["gsm8k", "humaneval", "mbpp"]
    assert hf.batch_size == "auto" and hf.apply_chat_template is True and hf.fewshot_as_multiturn is True
    assert hf.confirm_run_unsafe_code is True      # the harness runs HumanEval's and MBPP's tests only with it
    assert hf.output_path == folder + "/lm_eval"
    assert "refusal" in h.note                     # a safety expert: what the harness cannot measure is said


def test_a_safety_math_merge_without_chat_template_runs_gsm8k_only():
    h = harness.commands("/m/out", "float32", ["safety", "math"], chat_template=False)
    args = parse(h.hf)
    assert args.tasks == ["gsm8k"] and args.model_args == {"pretrained": "/m/out", "dtype": "float32"}
    assert not hasattr(args, "apply_chat_template")      # the harness's default: no template
    assert not getattr(args, "confirm_run_unsafe_code", False)     # no code is run
    # a merge of experts of no known task still gets one utility task, and no safety note
    assert harness.commands("/m", "float16", [None, None]).tasks == ("gsm8k",)
    assert harness.commands("/m", "float16", ["code"]).note == ""


def test_an_exported_folder_s_card_and_the_cli_carry_the_commands(tmp_path, capsys):
    from core import cli
    out = str(tmp_path / "ta")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("merge_method: task_arithmetic\nbase_model: zoo:base\ndtype: bfloat16\n"
                      "models:\n  - model: zoo:safety\n  - model: zoo:code\nparameters:\n  lambda: 0.5\n")
    assert cli.main(["merge", str(recipe), "--out", out]) == 0
    printed = capsys.readouterr().out
    card = open(os.path.join(out, "README.md")).read()
    line = next(x for x in card.splitlines() if x.startswith("lm_eval --model hf"))
    args = parse(line)
    assert args.model_args == {"pretrained": out, "dtype": "bfloat16"} and args.tasks == ["humaneval", "mbpp"]
    assert "## Evaluate with lm-evaluation-harness" in card and "no task that scores refusal" in card
    assert line in printed and "lm_eval --model vllm" in printed


@pytest.mark.parametrize("kinds, tasks", [(["math", "math"], ("gsm8k",)), (["code", "math"], ("gsm8k", "humaneval", "mbpp"))])
def test_tasks_come_once_in_a_fixed_order(kinds, tasks):
    assert harness.tasks_for(kinds) == tasks
