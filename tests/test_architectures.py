"""Every method on every architecture people merge (issue 18).

Tiny random families (tests/archs.py: base + two experts, saved with
save_pretrained, one torch thread) of Llama, Qwen2 tied and untied, Qwen3,
Mistral, Gemma2, Gemma3 text, Phi3 (fused qkv), GPT-2, GPT-NeoX,
Qwen2-MoE, Mixtral and OLMo2. For each: compatibility names the
architecture; TA, TIES, LED (SNIP) and ACM-TA write folders that plain
transformers loads and generates from; a probe runs; a grown vocabulary
merges under the architecture's own embedding names. Then LED's other
location methods where transformers renames or fuses tensors (GPT-NeoX,
the MoE models), and the bad inputs.
"""
from __future__ import annotations

import os

import pytest
import torch

import core
from core import service
from core.checkpoint import inspect, layout
from core.errors import UserError
from core.methods.led import importance as I
from core.methods.acm import activations as A
from tests import archs

ARCHS = list(archs.CONFIGS)
GROWN = 8   # extra tokens of the grown expert
N = 4       # LED location samples per expert: a real SNIP, kept small


@pytest.fixture(scope="module", autouse=True)
def _one_thread_private_cache(tmp_path_factory):
    old_threads, old_cache = torch.get_num_threads(), core.CACHE_DIR
    torch.set_num_threads(1)
    core.CACHE_DIR = str(tmp_path_factory.mktemp("arch-cache"))
    I.clear_memory_cache()
    A.clear_memory_cache()
    yield
    I.clear_memory_cache()
    A.clear_memory_cache()
    core.CACHE_DIR = old_cache
    torch.set_num_threads(old_threads)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """``family(arch)``: the folders of one architecture, built once per module."""
    made: dict[str, dict[str, str]] = {}

    def get(arch: str) -> dict[str, str]:
        if arch not in made:
            # a seed per architecture: Llama and Mistral of one seed are the same bytes
            made[arch] = archs.build(arch, str(tmp_path_factory.mktemp(arch)), grown=GROWN, seed=ARCHS.index(arch))
        return made[arch]
    return get


def _loads_and_generates(folder: str, vocab: int = archs.VOCAB) -> None:
    """Plain transformers (no code of ours) loads the folder and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.get_input_embeddings().weight.shape[0] == vocab
    ids = tok("the sum is", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 3)


def _recipes(f: dict[str, str]) -> dict[str, dict]:
    two = [f["e1"], f["e2"]]
    return {
        "ta": {"merge_method": "task_arithmetic", "base_model": f["base"],
               "models": [{"model": f["e1"], "parameters": {"weight": 0.5}},
                          {"model": f["e2"], "parameters": {"weight": 0.3}}]},
        "ties": {"merge_method": "ties", "base_model": f["base"], "models": two, "parameters": {"density": 0.5}},
        "led": {"merge_method": "led", "base_model": f["base"],
                "models": [{"model": f["e1"], "task": "safety", "parameters": {"mask_ratio": 0.3, "weight": 0.5}},
                           {"model": f["e2"], "task": "math", "parameters": {"mask_ratio": 0.3}}],
                "parameters": {"n_samples": N}},
        "acm": {"merge_method": "acm", "base_model": f["base"], "models": two,
                "parameters": {"n_calibration": 4, "clusters": 2}},
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_on_the_architecture(arch, family, tmp_path):
    f = family(arch)
    rep = service.compatibility(f["base"], [f["e1"], f["e2"]])
    cls = inspect(f["base"]).architecture
    assert rep.ok and rep.architecture.startswith(cls) and cls in rep.sentence(), rep.problems
    base, e1, e2 = archs.folder_tensors(f["base"]), archs.folder_tensors(f["e1"]), archs.folder_tensors(f["e2"])
    for name, rec in _recipes(f).items():
        out = str(tmp_path / name)
        res = service.merge(rec, out_dir=out)
        merged = archs.folder_tensors(out)
        assert set(merged) == set(base), name
        _loads_and_generates(out)
        if name == "ta":
            for k in base:   # θ₀ + 0.5 τ₁ + 0.3 τ₂, every checkpoint tensor (per-expert ones included)
                want = base[k] + 0.5 * (e1[k] - base[k]) + 0.3 * (e2[k] - base[k])
                torch.testing.assert_close(merged[k], want, rtol=0, atol=2e-6)
        if name == "led":
            # every entry is the base's or the base plus λ times one expert's change
            moved = 0
            for k in base:
                d = merged[k] - base[k]
                one = torch.isclose(d, 0.5 * (e1[k] - base[k]), atol=1e-6)
                two = torch.isclose(d, e2[k] - base[k], atol=1e-6)
                assert bool((d.abs() < 1e-7).logical_or(one).logical_or(two).all()), k
                moved += int((d.abs() > 1e-7).sum())
            total = sum(t.numel() for t in base.values())
            assert 0.1 * total < moved < 0.6 * total, (moved, total)
            assert res.analysis and res.analysis["cached"] is False
        if name == "acm":
            coef = res.analysis["coef"]
            assert len(res.analysis["layers"]) == archs.LAYERS + 3
            assert all(0.5 <= c < 1 for v in coef.values() for c in v)
    # a probe runs on the merged model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ta"))
    got = service.probe(model, tokenizer=AutoTokenizer.from_pretrained(str(tmp_path / "ta")), suites="math",
                        limit=2, max_new_tokens=4)
    assert got["suites"]["math"]["n"] == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_a_grown_vocabulary_merges_under_the_architectures_names(arch, family, tmp_path):
    f = family(arch)
    rep = service.compatibility(f["base"], [f["e1"], f["grown"]])
    assert rep.ok and rep.vocab_extra == {f["grown"]: GROWN}, rep.problems
    out = str(tmp_path / "out")
    service.merge({"merge_method": "task_arithmetic", "base_model": f["base"], "models": [f["e1"], f["grown"]]},
                  out_dir=out)
    merged, grown, base = archs.folder_tensors(out), archs.folder_tensors(f["grown"]), archs.folder_tensors(f["base"])
    vocab = layout(inspect(f["base"])).vocab & set(base)
    assert vocab, arch
    for k in vocab:   # the extra rows are the grown expert's, as stored
        assert merged[k].shape[0] == archs.VOCAB + GROWN
        torch.testing.assert_close(merged[k][archs.VOCAB:], grown[k][archs.VOCAB:], rtol=0, atol=0)
    _loads_and_generates(out, archs.VOCAB + GROWN)


def test_the_command_line_names_the_architecture(family, cli):
    f = family("gpt-neox")
    code, out, err = cli(["compat", f["base"], f["e1"], f["grown"]])
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "Compatible: GPTNeoXForCausalLM (gpt_neox)."
    assert f"adds {GROWN} tokens to the vocabulary" in out


def test_vocabulary_names_come_from_the_model_class(family):
    """The embedding and head of each naming, as transformers names them in the checkpoint."""
    want = {"gpt-neox": {"gpt_neox.embed_in.weight", "embed_out.weight"}, "gpt2": {"transformer.wte.weight"},
            "qwen2-tied": {"model.embed_tokens.weight"}, "qwen2": {"model.embed_tokens.weight", "lm_head.weight"},
            "phi3": {"model.embed_tokens.weight", "lm_head.weight"}}
    for arch, names in want.items():
        info = inspect(family(arch)["base"])
        assert layout(info).vocab & set(info.tensors) == names, arch


# ------------------------------------------------- LED where names differ
@pytest.mark.parametrize("arch", ["gpt-neox", "qwen2-moe", "mixtral", "gpt2"])
@pytest.mark.parametrize("location", ["snip", "wanda", "magnitude"])
def test_led_every_location_method(arch, location, family, tmp_path):
    f = family(arch)
    rec = _recipes(f)["led"]
    rec["parameters"]["location"] = location
    out = str(tmp_path / "out")
    res = service.merge(rec, out_dir=out)
    merged, base = archs.folder_tensors(out), archs.folder_tensors(f["base"])
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    # a tensor that is zero in the base (a fresh bias) is unimportant there by
    # definition (|θ₀| = 0), so LED's election "11" never takes it
    floats = {k for k, v in base.items() if v.is_floating_point() and v.numel() > 4 and bool(v.any())}
    # Wanda and SNIP see only tokens routed to an expert; magnitude sees all
    assert len(changed) >= 0.8 * len(floats), sorted(floats - changed)[:5]
    _loads_and_generates(out)


@pytest.mark.parametrize("arch,up", [("qwen2-moe", ("gate_proj", "up_proj", "down_proj")),
                                     ("mixtral", ("w1", "w3", "w2"))])
@pytest.mark.parametrize("location", ["snip", "wanda"])
def test_fused_expert_scores_are_split_back_per_checkpoint_tensor(arch, up, location, family):
    """Scored on transformers' fused parameter, stored per expert tensor of
    the checkpoint: expert 1's gate/up/down scores are slices of the fused ones."""
    from transformers import AutoModelForCausalLM
    from core.methods.led import scoring as S
    f = family(arch)
    info = inspect(f["e1"])
    rows = I.builtin_rows("math", N)
    scores, _ = I.compute([I.Job(info, rows, "e1")], location)
    model = AutoModelForCausalLM.from_pretrained(f["e1"], dtype=torch.float32)
    samples = S.encode(archs_tokenizer(f["e1"]), rows, 64)
    fused = (S.snip if location == "snip" else S.wanda)(model, samples)
    gate, upn, down = up
    mid = "block_sparse_moe" if arch == "mixtral" else "mlp"
    gu, dn = fused["model.layers.1.mlp.experts.gate_up_proj"], fused["model.layers.1.mlp.experts.down_proj"]
    half = gu.shape[1] // 2
    for e in range(gu.shape[0]):
        pre = f"model.layers.1.{mid}.experts.{e}."
        torch.testing.assert_close(scores[0].get(pre + f"{gate}.weight"), gu[e, :half])
        torch.testing.assert_close(scores[0].get(pre + f"{upn}.weight"), gu[e, half:])
        torch.testing.assert_close(scores[0].get(pre + f"{down}.weight"), dn[e])
    assert float(gu.sum()) > 0


def archs_tokenizer(folder: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------- ACM's points
@pytest.mark.parametrize("arch,embed,norm,head", [
    ("gpt2", "transformer.wte.weight", "transformer.ln_f.weight", None),
    ("gpt-neox", "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight", "embed_out.weight"),
])
def test_acm_finds_blocks_norm_and_head_of_any_naming(arch, embed, norm, head, family):
    f = family(arch)
    rec = _recipes(f)["acm"]
    prep = core.methods.acm.prepare(service.plan(rec))
    assert prep.aux(embed)["point"] == "embed"
    assert prep.aux(norm)["point"] == "norm"
    if head:
        assert prep.aux(head)["point"] == "lm_head"
    assert prep.aux(f"{'transformer.h' if arch == 'gpt2' else 'gpt_neox.layers'}.1.mlp."
                    f"{'c_fc' if arch == 'gpt2' else 'dense_h_to_4h'}.weight")["point"] == "layer 1"


def test_acm_refuses_a_model_whose_blocks_it_cannot_find(family):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(family("llama")["base"])
    model.model.norm = torch.nn.Identity()   # no final norm after the blocks
    with pytest.raises(UserError) as exc:
        A._Hooks(model)
    assert str(exc.value).startswith("ACM cannot find the decoder blocks and the final norm of LlamaForCausalLM")
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------- bad input
def _refused(rec: dict, tmp_path, *needles) -> str:
    out = tmp_path / "never"
    with pytest.raises(UserError) as exc:
        service.merge(rec, out_dir=str(out))
    msg = str(exc.value)
    assert "\n" not in msg and msg.endswith("."), msg
    for n in needles:
        assert n in msg, (n, msg)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith("never")]
    return msg


def test_experts_of_another_architecture_are_one_sentence(family, tmp_path):
    rec = {"merge_method": "task_arithmetic", "base_model": family("mixtral")["base"],
           "models": [family("qwen2-moe")["e1"]]}
    _refused(rec, tmp_path, "Qwen2MoeForCausalLM", "MixtralForCausalLM", "only models of one architecture merge")


def test_tied_against_untied_is_one_sentence(family, tmp_path):
    rec = {"merge_method": "task_arithmetic", "base_model": family("qwen2-tied")["base"],
           "models": [family("qwen2")["e1"]]}
    _refused(rec, tmp_path, "'lm_head.weight'", "ties it to the input embedding")


def test_fused_against_per_expert_moe_checkpoints_is_one_sentence(family, tmp_path):
    from transformers import AutoModelForCausalLM
    f = family("qwen2-moe")
    fused = str(tmp_path / "fused")
    AutoModelForCausalLM.from_pretrained(f["e1"]).save_pretrained(fused, save_original_format=False)
    assert "model.layers.0.mlp.experts.gate_up_proj" in inspect(fused).tensors   # stored as held in memory
    rec = {"merge_method": "task_arithmetic", "base_model": f["base"], "models": [fused]}
    _refused(rec, tmp_path, "holds them in memory (e.g. 'model.layers.0.mlp.experts.down_proj')",
             "'model.layers.0.mlp.experts.0.down_proj.weight'", "save both with save_pretrained")


def test_scores_read_back_from_their_files_merge_the_same(family, tmp_path, monkeypatch):
    """A score set too big for memory is written by the one writer and read
    back per tensor (FileScores): the same masks, so the same merge, as when
    kept in memory -- for split expert tensors too."""
    f = family("mixtral")
    rec = _recipes(f)["led"]
    service.merge(rec, out_dir=str(tmp_path / "memory"))
    monkeypatch.setattr(core, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(I, "MEMORY_BYTES", 0)
    I.clear_memory_cache()
    service.merge(rec, out_dir=str(tmp_path / "files"))
    assert all(isinstance(s, I.FileScores) for s in I.CACHE.values())
    I.clear_memory_cache()
    service.merge(rec, out_dir=str(tmp_path / "files-again"))   # from the disk cache alone
    a, b, c = (archs.folder_tensors(str(tmp_path / x)) for x in ("memory", "files", "files-again"))
    assert set(a) == set(b) == set(c)
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k
