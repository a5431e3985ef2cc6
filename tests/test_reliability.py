"""Bad inputs and faults: what a user sees (docs/RELIABILITY.md is the table).

Every case goes through the command line's own ``main`` (the code path of
``python -m core``) and asserts: exit code non-zero, exactly one ``error:``
sentence on stderr that names the problem, no traceback, and no output
folder (nor a hidden temp folder) left behind. A few cases also run as a
real subprocess; the full subprocess sweep is marked slow.

Broken models are copies of the built-in family made in tmp_path and then
damaged; the family itself is never touched.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from core import ZOO_DIR, policy
from core import checkpoint as M
from core.checkpoint import writer
from core.checkpoint.reader import Reader
from core.eval.chat import check_memory
from core.errors import UserError

ST = "model.safetensors"
UP = "model.layers.1.mlp.up_proj.weight"
Q0 = "model.layers.0.self_attn.q_proj.weight"
EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """Pristine copies of base, safety and math (3 MB each)."""
    root = tmp_path_factory.mktemp("fam")
    for n in ("base", "safety", "math"):
        shutil.copytree(os.path.join(ZOO_DIR, n), root / n)
    return root


def variant(fam, tmp_path, name: str, src: str = "safety", *, config=None, edit=None) -> str:
    """A copy of ``src`` with its config updated by ``config`` and its tensors
    changed by ``edit(state_dict)`` (which may add, drop or replace)."""
    dst = tmp_path / name
    shutil.copytree(fam / src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    if edit:
        sd = load_file(str(dst / ST))
        edit(sd)
        save_file(sd, str(dst / ST), metadata={"format": "pt"})
    return str(dst)


def recipe(tmp_path, d: dict, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return str(path)


def ta(fam, *experts, **params) -> dict:
    d = {"merge_method": "task_arithmetic", "base_model": str(fam / "base"),
         "models": [{"model": e} for e in experts]}
    if params:
        d["parameters"] = params
    return d


def leftovers(out: str) -> list[str]:
    parent, base = os.path.dirname(out), os.path.basename(out)
    if not os.path.isdir(parent):
        return []
    return [x for x in os.listdir(parent) if x == base or x.startswith(f".{base}.")]


def refused(argv, cli, *needles, out: str | None = None, rc: int = 2) -> str:
    sentence = cli.refused(argv, *needles, rc=rc)
    if out is not None:
        assert leftovers(out) == [], leftovers(out)
    return sentence


def merge_refused(fam, tmp_path, cli, d: dict, *needles) -> str:
    out = str(tmp_path / "merged")
    return refused(["merge", recipe(tmp_path, d), "--out", out], cli, *needles, out=out)


# ------------------------------------------------------------- model pairs
def test_different_architecture_is_refused(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "mistral", config={"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    merge_refused(fam, tmp_path, cli, ta(fam, e), "MistralForCausalLM", "LlamaForCausalLM", "one architecture")
    refused(["compat", fam / "base", e], cli, "only models of one architecture merge")


def test_different_layer_count_is_refused(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "short", config={"num_hidden_layers": 3},
                edit=lambda sd: [sd.pop(k) for k in list(sd) if ".layers.3." in k])
    merge_refused(fam, tmp_path, cli, ta(fam, e), "has 3 layers but the base has 4")


def test_different_shape_is_refused(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "narrow", edit=lambda sd: sd.__setitem__(Q0, sd[Q0][:64].clone()))
    merge_refused(fam, tmp_path, cli, ta(fam, e), Q0, "[64, 128]", "[128, 128]")


def _grow(sd, extra: int = 3):
    g = torch.Generator().manual_seed(3)
    for k in (EMBED, HEAD):
        sd[k] = torch.cat([sd[k], torch.randn(extra, sd[k].shape[1], generator=g)])


def test_larger_vocab_is_merged_on_shared_rows_and_keeps_the_extra_rows(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "grown", config={"vocab_size": 105}, edit=_grow)
    out = tmp_path / "merged"
    code, stdout, err = cli(["merge", recipe(tmp_path, ta(fam, e, **{"lambda": 0.5})), "--out", out])
    assert code == 0, err
    assert "adds 3 tokens to the vocabulary" in stdout
    got, base, exp = (load_file(str(p / ST)) for p in (out, fam / "base", tmp_path / "grown"))
    for k in (EMBED, HEAD):
        assert got[k].shape[0] == 105
        torch.testing.assert_close(got[k][:102], base[k] + 0.5 * (exp[k][:102] - base[k]))
        assert torch.equal(got[k][102:], exp[k][102:])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 105


def test_smaller_vocab_is_refused_naming_the_embedding(fam, tmp_path, cli):
    def shrink(sd):
        for k in (EMBED, HEAD):
            sd[k] = sd[k][:100].clone()
    e = variant(fam, tmp_path, "small", config={"vocab_size": 100}, edit=shrink)
    merge_refused(fam, tmp_path, cli, ta(fam, e), "smaller vocabulary than the base", "100 rows", "base has 102")


# --------------------------------------------------------- broken folders
def test_missing_folder(fam, tmp_path, cli):
    merge_refused(fam, tmp_path, cli, ta(fam, str(tmp_path / "nope")), "does not exist")
    refused(["compat", tmp_path / "nope", fam / "safety"], cli, "nope", "does not exist")


def test_missing_config(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "noconfig")
    os.remove(os.path.join(e, "config.json"))
    merge_refused(fam, tmp_path, cli, ta(fam, e), "no config.json")


def test_config_that_is_not_json(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "badconfig")
    with open(os.path.join(e, "config.json"), "w") as f:
        f.write("{not json")
    merge_refused(fam, tmp_path, cli, ta(fam, e), "config.json", "not valid JSON")


def test_empty_folder(fam, tmp_path, cli):
    (tmp_path / "empty").mkdir()
    merge_refused(fam, tmp_path, cli, ta(fam, str(tmp_path / "empty")), "is empty")


def test_truncated_safetensors(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "cut")
    path = os.path.join(e, ST)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    merge_refused(fam, tmp_path, cli, ta(fam, e), "truncated or corrupt")


@pytest.mark.parametrize("garbage", [b"", b"abc", struct.pack("<Q", 10**12) + b"{}",
                                     struct.pack("<Q", 4) + b"\xff\xfe{}", struct.pack("<Q", 2) + b"[]"],
                         ids=["empty", "short", "huge-header", "not-utf8", "not-an-object"])
def test_corrupt_safetensors_header(fam, tmp_path, cli, garbage):
    e = variant(fam, tmp_path, "garbled")
    with open(os.path.join(e, ST), "wb") as f:
        f.write(garbage)
    merge_refused(fam, tmp_path, cli, ta(fam, e), "is not a readable safetensors file")


def test_header_whose_shape_does_not_match_its_bytes(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "lying")
    path = os.path.join(e, ST)
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header[Q0]["shape"] = [128, 127]           # offsets still say 128 x 128
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (n - len(new))               # same length, so the data stays where it was
    assert len(new) == n
    with open(path, "wb") as f:
        f.write(raw[:8] + new + raw[8 + n:])
    merge_refused(fam, tmp_path, cli, ta(fam, e), "is corrupt", Q0)


def test_only_pickled_weights_are_refused_unless_opted_in(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "pickled")
    torch.save(load_file(os.path.join(e, ST)), os.path.join(e, "pytorch_model.bin"))
    os.remove(os.path.join(e, ST))
    merge_refused(fam, tmp_path, cli, ta(fam, e), "only pickled weights", "pytorch_model.bin", "opt in")


def test_opting_in_to_pickles_reads_a_safetensors_copy_and_still_runs_no_code(fam, tmp_path, monkeypatch):
    import core
    monkeypatch.setattr(core, "CACHE_DIR", str(tmp_path / "cache"))
    e = variant(fam, tmp_path, "pickled")
    sd = load_file(os.path.join(e, ST))
    torch.save(sd, os.path.join(e, "pytorch_model.bin"))
    os.remove(os.path.join(e, ST))
    info = M.inspect(e, allow_pickle=True)
    assert info.path.startswith(str(tmp_path / "cache")) and info.tensors.keys() == sd.keys()
    from core import service
    out = str(tmp_path / "merged")
    infos = {str(fam / "base"): M.inspect(str(fam / "base")), e: info}
    service.merge(ta(fam, e), out_dir=out, infos=infos)
    got = load_file(os.path.join(out, ST))
    base = load_file(str(fam / "base" / ST))
    assert not torch.equal(sd[UP], base[UP])
    for k in sd:                                            # TA with λ=1 and one expert gives the expert
        torch.testing.assert_close(got[k], sd[k], rtol=0, atol=1e-6)
    # a pickle that would run code is refused even with the opt-in
    evil = tmp_path / "evil"
    shutil.copytree(e, evil, ignore=shutil.ignore_patterns("*.bin"))

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    torch.save({"w": Boom()}, evil / "pytorch_model.bin")
    with pytest.raises(UserError, match="is not a plain tensor checkpoint"):
        M.inspect(str(evil), allow_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_trust_remote_code_model_is_refused_unless_opted_in(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "remote", config={"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}})
    merge_refused(fam, tmp_path, cli, ta(fam, e), "needs custom code", "trust_remote_code")
    assert M.inspect(e, trust_remote_code=True).architecture == "LlamaForCausalLM"


# ------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_expert_with_nan_or_inf_is_named_and_nothing_saved(fam, tmp_path, cli, bad):
    e = variant(fam, tmp_path, "poisoned", edit=lambda sd: sd[UP].__setitem__((3, 5), bad))
    s = merge_refused(fam, tmp_path, cli, ta(fam, e), "contains NaN or Inf", UP, e)
    assert s.endswith("nothing was written.")


def test_merge_that_overflows_float32_is_detected_not_saved(fam, tmp_path, cli):
    # every input finite; base + 2·(2·τ) with τ ≈ 3e38 is +inf in float32
    e = variant(fam, tmp_path, "huge", edit=lambda sd: sd[UP].__setitem__((0, 0), 3e38))
    d = ta(fam, e, **{"lambda": 2.0})
    d["models"][0]["parameters"] = {"weight": 2.0}
    merge_refused(fam, tmp_path, cli, d, "produced NaN or Inf", UP, "nothing was written")


def test_merge_that_overflows_float16_is_detected_not_saved(fam, tmp_path, cli):
    # 70000 is an ordinary float32 but past float16's 65504 (this used to be saved as inf)
    e = variant(fam, tmp_path, "big", edit=lambda sd: sd[UP].__setitem__((0, 0), 7e4))
    d = ta(fam, e)
    d["dtype"] = "float16"
    merge_refused(fam, tmp_path, cli, d, "too large for float16", UP, "nothing was written")


# --------------------------------------------------------------- recipes
def _with_method(fam, method: str, **kw) -> dict:
    d = ta(fam, str(fam / "safety"), str(fam / "math"))
    d["merge_method"] = method
    d.update(kw)
    return d


@pytest.mark.parametrize("method,where,value,needles", [
    ("task_arithmetic", "global", {"lambda": 3}, ["'lambda' in parameters is 3", "between 0 and 2"]),
    ("task_arithmetic", "global", {"lambda": -0.5}, ["'lambda' in parameters is -0.5", "between 0 and 2"]),
    ("ties", "model", {"density": 1.5}, ["'density' of", "is 1.5", "between 0 and 1"]),
    ("slerp", "global", {"t": 1.01}, ["'t' in parameters is 1.01", "between 0 and 1"]),
    ("led", "model", {"mask_ratio": 1.2}, ["'mask_ratio'", "1.2", "between 0 and 1"]),
    ("acm", "global", {"temperature": 0}, ["'temperature' in parameters is 0", "between 0.01 and 10"]),
], ids=["lambda-high", "lambda-negative", "density", "slerp-t", "led-r", "acm-t"])
def test_parameter_out_of_range(fam, tmp_path, cli, method, where, value, needles):
    d = _with_method(fam, method)
    if method == "slerp":
        d["models"] = d["models"][:1]
    if where == "global":
        d["parameters"] = value
    else:
        d["models"][0]["parameters"] = value
    merge_refused(fam, tmp_path, cli, d, *needles)


@pytest.mark.parametrize("text,needles", [
    ("lambda: abc", ["'lambda' in parameters must be a number, not 'abc'"]),
    # YAML 1.1 reads 1e9 as text; it is judged as the number written (was: "must be a number, not '1e9'")
    ("lambda: 1e9", ["'lambda' in parameters is 1e+09; it must be between 0 and 2"]),
    ("lambda: .nan", ["must be a finite number"]),
    ("lambda: [1, 2]", ["must be a number"]),
    ("lambda: true", ["must be a number, not True"]),
])
def test_non_numeric_yaml_values(fam, tmp_path, cli, text, needles):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(ta(fam, str(fam / "safety"))) + "parameters:\n  " + text + "\n")
    out = str(tmp_path / "merged")
    refused(["merge", path, "--out", out], cli, *needles, out=out)


def test_unknown_method_lists_the_known_ones(fam, tmp_path, cli):
    merge_refused(fam, tmp_path, cli, _with_method(fam, "frankenmerge"),
                  "Unknown merge method 'frankenmerge'", "task_arithmetic", "ties")


def test_unknown_parameter_lists_the_known_ones(fam, tmp_path, cli):
    merge_refused(fam, tmp_path, cli, ta(fam, str(fam / "safety"), densty=0.5),
                  "'densty' in parameters is not a parameter of task_arithmetic", "known: lambda")


def test_duplicate_experts(fam, tmp_path, cli):
    s = str(fam / "safety")
    merge_refused(fam, tmp_path, cli, ta(fam, s, s + "/"), "listed twice")


def test_zero_experts(fam, tmp_path, cli):
    merge_refused(fam, tmp_path, cli, ta(fam), "lists no models")
    merge_refused(fam, tmp_path, cli, ta(fam, str(fam / "base")), "no models to merge besides the base")


def test_recipe_that_is_not_yaml_or_not_a_recipe(fam, tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [task_arithmetic\nmodels: x\n")
    out = str(tmp_path / "merged")
    refused(["merge", bad, "--out", out], cli, "not valid YAML at line", out=out)
    bad.write_text("- just\n- a list\n")
    refused(["merge", bad, "--out", out], cli, "must be a YAML mapping", out=out)
    refused(["merge", tmp_path / "missing.yaml", "--out", out], cli, "The recipe file", "does not exist", out=out)


# ----------------------------------------------------------- the output
def test_output_folder_not_writable(fam, tmp_path, cli):
    # /proc refuses new folders even for root (chmod cannot stop root)
    out = "/proc/merge-explorer-test"
    refused(["merge", recipe(tmp_path, ta(fam, str(fam / "safety"))), "--out", out], cli,
            "Could not write the merged model", "nothing was kept")
    assert not os.path.exists(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_output_folder_in_a_read_only_folder(fam, tmp_path, cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        out = str(ro / "merged")
        refused(["merge", recipe(tmp_path, ta(fam, str(fam / "safety"))), "--out", out], cli,
                "Cannot write to", out=out)
    finally:
        ro.chmod(0o755)


def test_output_folder_exists_or_is_a_file(fam, tmp_path, cli):
    r = recipe(tmp_path, ta(fam, str(fam / "safety")))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    refused(["merge", r, "--out", tmp_path / "taken"], cli, "already exists", "--force")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    refused(["merge", r, "--out", tmp_path / "afile"], cli, "is a file")


def test_disk_full_mid_write_keeps_nothing(fam, tmp_path, cli, monkeypatch):
    real, calls = writer.ShardWriter.add, []

    def add(self, name, t):
        calls.append(name)
        if len(calls) == 10:   # midway: 9 of 39 tensors are already on disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, name, t)
    monkeypatch.setattr(writer.ShardWriter, "add", add)
    out = str(tmp_path / "merged")
    refused(["merge", recipe(tmp_path, ta(fam, str(fam / "safety"))), "--out", out], cli,
            "No space left on device", "nothing was kept", out=out)
    assert len(calls) == 10


def test_disk_full_with_force_keeps_the_old_folder(fam, tmp_path, cli, monkeypatch):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("previous merge")

    def full(self, name, t):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(writer.ShardWriter, "add", full)
    refused(["merge", recipe(tmp_path, ta(fam, str(fam / "safety"))), "--out", out, "--force"], cli,
            "No space left on device")
    assert sorted(os.listdir(out)) == ["old.txt"]
    assert leftovers(str(out)) == ["merged"]


def test_interrupt_from_the_progress_callback_leaves_nothing(fam, tmp_path):
    from core import service
    seen = []

    def progress(frac, msg):
        seen.append(frac)
        if frac > 0.5:
            raise KeyboardInterrupt
    out = str(tmp_path / "merged")
    with pytest.raises(KeyboardInterrupt):
        service.merge(ta(fam, str(fam / "safety")), out_dir=out, progress=progress)
    assert 0.5 < seen[-1] < 1.0
    assert leftovers(out) == []


def test_ctrl_c_on_the_command_line(fam, tmp_path, cli, monkeypatch):
    real, n = writer.ShardWriter.add, []

    def add(self, name, t):
        n.append(1)
        if len(n) == 5:
            raise KeyboardInterrupt
        real(self, name, t)
    monkeypatch.setattr(writer.ShardWriter, "add", add)
    out = str(tmp_path / "merged")
    refused(["merge", recipe(tmp_path, ta(fam, str(fam / "safety"))), "--out", out], cli,
            "interrupted", "nothing was written", out=out, rc=130)


_KILLABLE = r"""
import os, sys, time
import core.checkpoint.writer as w
real, n = w.ShardWriter.add, [0]
def add(self, name, t):
    n[0] += 1
    real(self, name, t)
    if n[0] == 8:                      # tensors are on disk in the temp folder now
        self._fh.flush()
        open(sys.argv[2], "w").close()
        time.sleep(60)
w.ShardWriter.add = add
from core.cli import main
from core.eval.chat import check_memory
sys.exit(main(["merge", sys.argv[1], "--out", sys.argv[3]]))
"""


@pytest.mark.slow   # a second Python process with torch: ~7 s on a busy machine
def test_sigkill_mid_merge_leaves_only_a_hidden_temp_folder_that_the_next_merge_removes(fam, tmp_path, cli):
    r = recipe(tmp_path, ta(fam, str(fam / "safety")))
    out, marker = str(tmp_path / "merged"), str(tmp_path / "marker")
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, r, marker, out], env=cli.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not os.path.exists(marker):
            assert proc.poll() is None and time.time() < deadline, "the merge never got going"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not os.path.exists(out)
    left = leftovers(out)
    assert left == [x for x in left if x.startswith(f".merged.partial-{proc.pid}-")] and len(left) == 1
    assert os.path.getsize(os.path.join(tmp_path, left[0], ST)) > 0   # half-written, and hidden
    code, _, err = cli(["merge", r, "--out", out])
    assert code == 0, err
    assert leftovers(out) == ["merged"]


def test_a_live_merges_temp_folder_is_not_removed(tmp_path):
    # a temp folder of a process that is still running belongs to a merge in progress
    parent = tmp_path
    mine = parent / f".merged.partial-{os.getppid()}-abcd1234"   # our parent process is alive
    dead = parent / ".merged.partial-999999999-abcd1234"
    other = parent / ".other.partial-999999999-abcd1234"
    for d in (mine, dead, other):
        d.mkdir()
    writer.clean_stale(str(parent), "merged")
    assert mine.exists() and other.exists() and not dead.exists()


# ---------------------------------------------------------- memory budget
def test_merge_over_the_memory_budget_is_refused_before_loading(fam, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MERGE_EXPLORER_MEMORY_BUDGET_GB", "0.0001")   # 105 KB
    opened = []
    monkeypatch.setattr(Reader, "_locate", lambda self, name: opened.append(name))
    infos = [M.inspect(str(fam / n)) for n in ("base", "safety", "math")]
    need = policy.fmt_bytes(policy.merge_estimate(infos[0], infos[1:]))
    assert need == "1 MB"
    merge_refused(fam, tmp_path, cli, ta(fam, str(fam / "safety"), str(fam / "math")),
                  f"Merging 2 models into '{fam / 'base'}' needs about {need} of memory but only 105 KB is free",
                  "MERGE_EXPLORER_MEMORY_BUDGET_GB")
    assert opened == [], "weights were read before the refusal"


def test_memory_estimates_by_hand(fam):
    base = M.inspect(str(fam / "base"))
    largest = max(t.numel for t in base.tensors.values())
    n = base.n_params
    assert policy.merge_estimate(base, [base, base]) == 6 * largest * 4
    assert policy.merge_estimate(base, [base], needs_grad=True) == 5 * largest * 4 + 3 * n * 4
    # a trim that may sort the largest tensor as mergekit does: |x|, sorted values, int64 indices
    assert policy.merge_estimate(base, [base, base], sorts=True) == 6 * largest * 4 + 20 * largest
    # live: merged state dict in the output dtype + cached float32 inputs (the family is small)
    assert policy.merge_estimate(base, [base], live=True, out_bytes=2) == 5 * largest * 4 + n * 2 + 2 * n * 4
    assert policy.load_estimate([base] * 3, 2) == int(3 * n * 2 * policy.CHAT_OVERHEAD)


def test_chat_and_load_over_the_budget(fam, monkeypatch):
    refs = [str(fam / n) for n in ("base", "safety", "math")]
    one = policy.load_estimate([M.inspect(refs[0])])
    monkeypatch.setenv("MERGE_EXPLORER_MEMORY_BUDGET_GB", str(1.5 * one / policy.GB))
    check_memory(refs[:1])                            # one model fits
    with pytest.raises(UserError, match=r"Loading '.*base', '.*safety', '.*math' needs about 1[01] MB"):
        check_memory(refs)                            # three at once do not
    monkeypatch.setenv("MERGE_EXPLORER_MEMORY_BUDGET_GB", str(0.5 * one / policy.GB))
    with pytest.raises(UserError, match=r"Loading '.*base' needs about"):
        M.load_model(refs[0], device="cpu")
    monkeypatch.setenv("MERGE_EXPLORER_MEMORY_BUDGET_GB", "lots")
    with pytest.raises(UserError, match="must be a number of gigabytes"):
        check_memory(refs[:1])


def test_budget_defaults_to_memavailable():
    avail, source = policy.available_bytes()
    if not os.path.exists("/proc/meminfo"):
        assert avail is None
        return
    line = next(x for x in open("/proc/meminfo") if x.startswith("MemAvailable:"))
    assert abs(avail - int(line.split()[1]) * 1024) < 512 * 2**20 and source == "available memory"


# ------------------------------------------------------------- Space mode
def test_space_mode_refuses_folders_outside_the_allow_list(fam, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MERGE_EXPLORER_SPACE", "1")
    s = merge_refused(fam, tmp_path, cli, ta(fam, str(fam / "safety")), "outside the folders this Space may read")
    assert str(fam / "base") in s
    # a folder that does not exist is refused the same way: no probing the disk
    refused(["compat", "zoo:base", "/etc/nothing-here"], cli, "outside the folders this Space may read")
    refused(["compat", "zoo:base", "../../../etc"], cli, "outside the folders this Space may read")
    # the built-in family always works
    code, stdout, _ = cli(["compat", "zoo:base", "zoo:safety"])
    assert code == 0 and "Compatible: LlamaForCausalLM (llama)." in stdout


def test_space_mode_allowed_paths_and_symlinks(fam, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MERGE_EXPLORER_SPACE", "1")
    monkeypatch.setenv("MERGE_EXPLORER_ALLOWED_PATHS", f"/nonexistent:{fam}")
    code, stdout, err = cli(["compat", fam / "base", fam / "safety"])
    assert code == 0 and "Compatible: LlamaForCausalLM (llama)." in stdout, err
    link = fam / "escape"
    if not link.exists():
        os.symlink(tmp_path, link)            # inside an allowed root, pointing outside it
    (tmp_path / "x").mkdir()
    refused(["compat", fam / "base", link / "x"], cli, "outside the folders this Space may read")
    assert not policy._under(str(fam) + "-evil", policy.allowed_roots())   # a prefix of the name is not a parent


def test_space_mode_hub_ids(monkeypatch, cli):
    monkeypatch.setenv("MERGE_EXPLORER_SPACE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refused(["compat", "zoo:base", "someone/evil-model"], cli, "'someone/evil-model' is not on this Space's list",
            "only the built-in models")
    monkeypatch.setenv("MERGE_EXPLORER_ALLOWED_MODELS", "Qwen/, HuggingFaceTB/SmolLM2-135M")
    refused(["compat", "zoo:base", "someone/evil-model"], cli, "(Qwen/, HuggingFaceTB/SmolLM2-135M)")
    refused(["compat", "zoo:base", "HuggingFaceTB/SmolLM2-1.7B"], cli, "not on this Space's list")
    # allowed ids pass the guard and go on to the Hub (offline here, so the next sentence is about that)
    for ok in ("qwen/Qwen2.5-0.5B", "HuggingFaceTB/SmolLM2-135M"):
        refused(["compat", "zoo:base", ok], cli, "Cannot reach the Hugging Face Hub")


def test_space_mode_refuses_opt_ins_and_foreign_output_folders(fam, tmp_path, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/merge-explorer")      # on by default on a Space
    assert policy.space_mode()
    with pytest.raises(UserError, match="does not run custom model code"):
        M.inspect("zoo:base", trust_remote_code=True)
    with pytest.raises(UserError, match="does not open pickled weights"):
        M.inspect("zoo:base", allow_pickle=True)
    monkeypatch.setenv("MERGE_EXPLORER_OUTPUT_ROOTS", str(tmp_path / "outputs"))
    from core import service
    with pytest.raises(UserError, match="writes merged models only under"):
        service.merge({"merge_method": "task_arithmetic", "base_model": "zoo:base", "models": ["zoo:safety"]},
                      out_dir=str(tmp_path / "elsewhere"))
    assert leftovers(str(tmp_path / "elsewhere")) == []
    monkeypatch.setenv("MERGE_EXPLORER_SPACE", "0")                # an explicit 0 wins
    assert not policy.space_mode()


# ------------------------------------------------- the process boundary
def test_real_process_user_error_is_one_sentence_exit_2(fam, tmp_path, cli):
    e = variant(fam, tmp_path, "cut")
    with open(os.path.join(e, ST), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(e, ST)) // 2)
    out = str(tmp_path / "merged")
    p = cli.process(["merge", recipe(tmp_path, ta(fam, e)), "--out", out], timeout=120)
    assert p.returncode == 2
    assert "truncated or corrupt" in cli.sentence(p.stderr)
    assert leftovers(out) == []


def test_real_process_internal_error_keeps_the_traceback_in_the_log(fam, tmp_path, cli):
    code = ("import sys, core.merge.plan as p\n"
            "def boom(*a, **k): raise ZeroDivisionError('bug')\n"
            "p.build = boom\n"
            "from core.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    log = tmp_path / "cli.log"
    out = str(tmp_path / "merged")
    p = cli.process(["merge", recipe(tmp_path, ta(fam, str(fam / "safety"))), "--out", out], code=code,
                    env={"MERGE_EXPLORER_LOG": str(log)}, timeout=120)
    assert p.returncode == 1
    s = cli.sentence(p.stderr)
    assert s == f"Internal error (ZeroDivisionError); details are in the log ({log})."
    assert "Traceback" in log.read_text() and "ZeroDivisionError: bug" in log.read_text()
    assert leftovers(out) == []


# Every CLI case above, once more as a real ``python -m core`` process.
_SWEEP = [
    ("missing", lambda f, t: ["compat", f / "base", t / "nope"], {}, "does not exist"),
    ("empty", lambda f, t: (t / "empty").mkdir() or ["compat", f / "base", t / "empty"], {}, "is empty"),
    ("arch", lambda f, t: ["compat", f / "base", variant(f, t, "m", config={"model_type": "mistral"})], {},
     "one architecture"),
    ("nan", lambda f, t: ["merge", recipe(t, ta(f, variant(f, t, "n", edit=lambda sd: sd[UP].fill_(float("nan"))))),
                          "--out", t / "merged"], {}, "NaN or Inf"),
    ("range", lambda f, t: ["merge", recipe(t, ta(f, str(f / "safety"), **{"lambda": 9})), "--out", t / "merged"],
     {}, "between 0 and 2"),
    ("budget", lambda f, t: ["merge", recipe(t, ta(f, str(f / "safety"))), "--out", t / "merged"],
     {"MERGE_EXPLORER_MEMORY_BUDGET_GB": "0.0001"}, "of memory"),
    ("space", lambda f, t: ["compat", "zoo:base", f / "safety"], {"MERGE_EXPLORER_SPACE": "1"}, "outside the folders"),
    ("space-hub", lambda f, t: ["compat", "zoo:base", "a/b"], {"MERGE_EXPLORER_SPACE": "1"}, "not on this Space's"),
    ("not-writable", lambda f, t: ["merge", recipe(t, ta(f, str(f / "safety"))), "--out", "/proc/merge-explorer-x"],
     {}, "nothing was kept"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", _SWEEP, ids=[c[0] for c in _SWEEP])
def test_sweep_as_real_processes(fam, tmp_path, case, cli):
    _, build, env, needle = case
    argv = build(fam, tmp_path)
    p = cli.process(argv, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert needle in cli.sentence(p.stderr)
    assert leftovers(str(tmp_path / "merged")) == []
