"""Fuzz the parsers a user feeds text to: only UserError may ever escape.

A recipe pasted into the UI, a probe file uploaded, a safetensors header
read from a stranger's folder: whatever the bytes, the user must get one
sentence, never a traceback. Each property runs a bounded number of
examples (the whole file takes seconds), derandomized so a
failure reproduces; hypothesis prints the smallest input that broke it.
"""
from __future__ import annotations

import inspect as pyinspect
import json
import os
import struct
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core import ZOO_DIR
from core.eval import probes
from core import recipe as R
from core.errors import UserError
from core.methods import REGISTRY
from core.checkpoint import DTYPE_BYTES, read_safetensors_header

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# ------------------------------------------------------------ strategies
numbers = st.one_of(st.integers(), st.integers(min_value=-10**400, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12),
                    st.sampled_from(["11", "10", "01", "ta", "ties", "snip", "true", "1e-3", ".nan"]))
anything = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)

PARAM_NAMES = sorted({p.name for s in REGISTRY.values() for p in s.params} |
                     {p.mergekit for s in REGISTRY.values() for p in s.params if p.mergekit} |
                     {"seed", "normalize", "int8_mask", "bogus"})
params = st.dictionaries(st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=6)),
                         st.one_of(numbers, scalars, anything), max_size=5)
model_refs = st.one_of(st.sampled_from(["zoo:base", "zoo:safety", "zoo:math", "zoo:code", "zoo:nope",
                                        "org/name", "./x", "", " ", "zoo:safety/"]), st.text(max_size=10))
entries = st.one_of(
    model_refs,
    st.fixed_dictionaries({"model": model_refs},
                          optional={"parameters": st.one_of(params, anything),
                                    "task": st.one_of(st.sampled_from(R.TASKS), anything)}),
    anything)
recipes = st.fixed_dictionaries(
    {"merge_method": st.one_of(st.sampled_from(sorted(REGISTRY) + ["nope"]), anything)},
    optional={"base_model": st.one_of(model_refs, anything),
              "models": st.one_of(st.lists(entries, max_size=4), anything),
              "parameters": st.one_of(params, anything),
              "dtype": st.one_of(st.sampled_from(list(R.DTYPES) + ["int8"]), anything),
              "tokenizer_source": st.one_of(model_refs, anything),
              "name": anything})


def _only_user_errors(fn, *args):
    """Run fn; a UserError is fine (its text is one line), anything else fails the property."""
    try:
        return fn(*args)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc) and "Traceback" not in str(exc)
        return None


# --------------------------------------------------------------- recipes
def _parse_and_validate(d):
    rec = R.from_dict(d)
    R.validate(rec)
    # a recipe that validates must survive its own YAML round trip unchanged
    again = R.loads(rec.to_yaml())
    R.validate(again)
    assert again.to_dict() == rec.to_dict()
    return rec


@SETTINGS
@given(recipes)
def test_structured_recipes_only_raise_user_errors(d):
    _only_user_errors(_parse_and_validate, d)


@SETTINGS
@given(anything)
def test_any_yaml_document_only_raises_user_errors(doc):
    text = yaml.safe_dump(doc)
    _only_user_errors(lambda t: R.validate(R.loads(t)), text)


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_only_raises_user_errors(text):
    _only_user_errors(lambda t: R.validate(R.loads(t)), text)


@pytest.mark.parametrize("text", [
    "[" * 600 + "]" * 600,                                     # recursion in PyYAML's composer
    "a: &x [*x]",                                              # a self-referencing alias
    "merge_method: task_arithmetic\nmodels: [zoo:safety]\nparameters: {lambda: 1" + "0" * 500 + "}",
    "merge_method: task_arithmetic\nbase_model: zoo:base\nmodels: [zoo:safety]\nparameters: {seed: 1" + "0" * 400 + "}",
    "merge_method: task_arithmetic\nmodels: [zoo:safety]\nparameters: {lambda: " + "1" * 5000 + "}",   # past int()'s digit limit
    "!!python/object/apply:os.system ['echo pwned']",         # safe_load refuses to construct it
    "\x00\x01\x02",
    "merge_method: 5\nmodels: {a: b}",
], ids=["deep", "alias-loop", "huge-float", "huge-seed", "long-int", "python-tag", "control-chars", "wrong-types"])
def test_hand_picked_nasty_recipes(text):
    _only_user_errors(lambda t: R.validate(R.loads(t)), text)


def test_a_huge_number_is_a_range_error_not_an_overflow():
    with pytest.raises(UserError, match="1329 bits; it is far out of range"):
        R.validate(R.from_dict({"merge_method": "task_arithmetic", "base_model": "zoo:base",
                                "models": ["zoo:safety"], "parameters": {"lambda": 10**400}}))


# ------------------------------------------------------ probe-file loaders
_DIR = tempfile.mkdtemp(prefix="fuzz-probes-")


def _loaders():
    """Every ``load_*`` function of core.eval.probes that takes one path: new
    loaders (CSV, JSONL ...) are fuzzed as soon as they exist."""
    out = []
    for name, fn in vars(probes).items():
        if not name.startswith("load") or not callable(fn) or getattr(fn, "__module__", "") != probes.__name__:
            continue
        try:
            sig = pyinspect.signature(fn)
        except (TypeError, ValueError):
            continue
        required = [p for p in sig.parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(required) == 1:
            out.append(fn)
    return out


LOADERS = _loaders()
EXTS = (".jsonl", ".csv", ".json", ".txt")


def _write(data: bytes, ext: str) -> str:
    path = os.path.join(_DIR, "probe" + ext)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _run_loaders(path: str):
    for fn in LOADERS:
        rows = _only_user_errors(fn, path)
        if rows is not None:
            assert isinstance(rows, list)


def test_there_is_a_loader_to_fuzz():
    assert probes.load_suite in LOADERS


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(EXTS))
def test_probe_loaders_on_random_bytes(data, ext):
    _run_loaders(_write(data, ext))


rows = st.one_of(anything, st.fixed_dictionaries({"prompt": st.one_of(st.text(max_size=20), anything)},
                                                 optional={"answer": scalars, "entry_point": scalars,
                                                           "tests": anything, "category": scalars}))


@SETTINGS
@given(st.lists(rows, max_size=5), st.sampled_from(EXTS), st.booleans())
def test_probe_loaders_on_json_lines(items, ext, blank_lines):
    sep = "\n\n" if blank_lines else "\n"
    text = sep.join(json.dumps(x) for x in items)
    _run_loaders(_write(text.encode(), ext))


@SETTINGS
@given(st.lists(st.lists(st.text(max_size=10), max_size=4), max_size=5), st.sampled_from([",", ";", "\t"]))
def test_probe_loaders_on_csv_like_text(table, delim):
    text = "\n".join(delim.join(cells) for cells in [["prompt", "answer"]] + table)
    _run_loaders(_write(text.encode("utf-8", "surrogatepass"), ".csv"))


@pytest.mark.parametrize("data", [b"\xff\xfe\x00bad utf8\n", b"[" * 5000 + b"\n", b'{"prompt": "x"}\n\x00\n',
                                  "{\"prompt\": \"caf\u00e9\"}\n".encode("latin-1")],
                         ids=["not-utf8", "deep-json", "nul-line", "latin-1"])
def test_hand_picked_nasty_probe_files(data):
    for ext in EXTS:
        _run_loaders(_write(data, ext))


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from(["harmful", "benign", "math", "code", "x=y", "math=", "=",
                                           os.path.join(_DIR, "probe.jsonl"), os.path.join(_DIR, "probe.csv"),
                                           "code=" + os.path.join(_DIR, "probe.jsonl"), "/", "nope.csv"]),
                          st.text(max_size=8)), max_size=4))
def test_suite_lists_only_raise_user_errors(items):
    _write(b'{"prompt": "hi", "answer": 3}\n', ".jsonl")
    _write(b"goal,target\nx,y\n", ".csv")
    _only_user_errors(probes.parse_suites, ",".join(items))


def test_missing_probe_file_is_a_sentence():
    for fn in LOADERS:
        with pytest.raises(UserError):
            fn(os.path.join(_DIR, "does-not-exist.jsonl"))


# ------------------------------------------------- safetensors headers
def _st_file(header_bytes: bytes, data_len: int, declared: int | None = None) -> str:
    path = os.path.join(_DIR, "model.safetensors")
    n = len(header_bytes) if declared is None else declared
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + header_bytes + b"\0" * data_len)
    return path


entry = st.one_of(anything, st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(sorted(DTYPE_BYTES) + ["F4", "XYZ"]), anything),
    "shape": st.one_of(st.lists(st.integers(-2, 8), max_size=3), anything),
    "data_offsets": st.one_of(st.lists(st.integers(-4, 600), min_size=2, max_size=2), anything)}))


@SETTINGS
@given(st.dictionaries(st.text(max_size=6), entry, max_size=4), st.integers(0, 512),
       st.one_of(st.none(), st.integers(0, 2**64 - 1)))
# hypothesis 6.170.17 drew this: a tensor name holding a newline made the
# sentence two lines until names from files were quoted with errors.quoted
@example({"\n": None}, 0, None)
def test_safetensors_header_reader_only_raises_user_errors(header, data_len, declared):
    path = _st_file(json.dumps(header).encode(), data_len, declared)
    got = _only_user_errors(read_safetensors_header, path)
    if got is not None:
        # what it accepted is self-consistent: known dtypes, sizes that fit the file
        for meta in got.values():
            assert meta.dtype in DTYPE_BYTES and all(s >= 0 for s in meta.shape)


@SETTINGS
@given(st.binary(max_size=200))
def test_safetensors_reader_on_random_bytes(data):
    path = os.path.join(_DIR, "raw.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    _only_user_errors(read_safetensors_header, path)


# ------------------------------------------------ config.json and the index
_MODEL = os.path.join(_DIR, "model")
os.makedirs(_MODEL, exist_ok=True)
if not os.path.exists(os.path.join(_MODEL, "weights.safetensors")):
    # the base's real weights, linked (not copied): only config and index vary
    os.symlink(os.path.join(ZOO_DIR, "base", "model.safetensors"), os.path.join(_MODEL, "weights.safetensors"))

configs = st.one_of(anything, st.fixed_dictionaries({}, optional={
    "architectures": st.one_of(st.lists(st.sampled_from(["LlamaForCausalLM", "MistralForCausalLM"]), max_size=2),
                               anything),
    "model_type": st.one_of(st.sampled_from(["llama", "mistral"]), anything),
    "num_hidden_layers": st.one_of(st.integers(-1, 6), numbers, anything),
    "vocab_size": st.one_of(st.integers(0, 200), numbers, anything),
    "auto_map": anything}))
indexes = st.one_of(anything, st.fixed_dictionaries({"weight_map": st.one_of(
    st.dictionaries(st.text(max_size=6), st.sampled_from(["weights.safetensors", "../model/weights.safetensors",
                                                          "/etc/passwd", "missing.safetensors", ""]), max_size=3),
    anything)}))


def _inspect_and_compare(ref: str):
    from core import checkpoint as M
    info = M.inspect(ref)
    base = M.inspect("zoo:base")
    rep = M.compatibility(base, [info])
    assert rep.ok or rep.problems[0].endswith(".")
    return rep


@SETTINGS
@given(configs, st.one_of(st.none(), indexes))
def test_config_and_index_only_raise_user_errors(config, index):
    with open(os.path.join(_MODEL, "config.json"), "w") as f:
        json.dump(config, f)
    idx = os.path.join(_MODEL, "model.safetensors.index.json")
    if index is None:
        if os.path.exists(idx):
            os.remove(idx)
    else:
        with open(idx, "w") as f:
            json.dump(index, f)
    _only_user_errors(_inspect_and_compare, _MODEL)
