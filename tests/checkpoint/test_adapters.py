"""LoRA adapters as experts (core/checkpoint/adapters.py): ``BASE+ADAPTER``
materialised into a full folder, checked against PEFT's own merge, and
refused in one sentence where it cannot be done."""
from __future__ import annotations

import json
import os

import pytest
import torch

from core import checkpoint as M
from core.checkpoint import adapters as A
from core.errors import UserError

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _peft_model(base_dir: str, seed: int = 3, **lora):
    """A PEFT LoRA over the base with non-zero B (a fresh LoRA's B is zero: its merge would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "lora_dropout": 0.0, **lora}
    model = get_peft_model(model, LoraConfig(**cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_embedding_B" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _save(model, folder) -> str:
    model.save_pretrained(folder)
    return str(folder)


def _merged_by_peft(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture()
def cache(monkeypatch, tmp_path):
    monkeypatch.setattr(A, "CACHE_DIR", str(tmp_path / "cache"))
    A._FRESH.clear()
    return tmp_path / "cache"


def _weights(folder: str) -> dict[str, torch.Tensor]:
    info = M.inspect(folder)
    with M.Reader(info) as r:
        return {k: r.get(k) for k in info.tensors}


def test_an_adapter_reference_is_the_base_plus_s_BA_as_peft_merges_it(tiny_family, tmp_path, cache):
    base = tiny_family["base"]
    model = _peft_model(base)
    adapter = _save(model, tmp_path / "adapter")
    want = _merged_by_peft(model)
    path = M.resolve(f"{base}+{adapter}")
    assert path.startswith(str(cache))
    got = _weights(path)
    base_w = _weights(base)
    changed = [k for k in got if not torch.equal(got[k], base_w[k])]
    # exactly the adapted modules changed (2 layers x 3 targets), every other tensor bit for bit the base's
    assert sorted(changed) == sorted(f"model.layers.{i}.{m}.weight" for i in range(2)
                                     for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    for k in changed:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=2e-7)
    # the folder is a model: config and tokenizer come along, and it loads and inspects
    assert os.path.isfile(os.path.join(path, "tokenizer.json"))
    assert M.inspect(f"{base}+{adapter}").n_params == M.inspect(base).n_params


def test_rslora_patterns_embeddings_and_modules_to_save(tiny_family, tmp_path, cache):
    base = tiny_family["base"]
    model = _peft_model(base, seed=5, use_rslora=True, rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 3},
                        target_modules=TARGETS + ["embed_tokens"], modules_to_save=["lm_head"])
    adapter = _save(model, tmp_path / "adapter")
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    assert cfg["use_rslora"] and cfg["rank_pattern"] == {"v_proj": 2}
    want = _merged_by_peft(model)
    got = _weights(M.resolve(f"{base}+{adapter}"))
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight",
              "model.embed_tokens.weight", "lm_head.weight"):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=2e-7)
    assert not torch.equal(got["lm_head.weight"], _weights(base)["lm_head.weight"])


def test_the_sum_is_one_rank_one_term_at_a_time_in_float64():
    # exact values: 2*3 + 1*5 = 11, scaled by 0.5; a BLAS matmul would give these too, but its order is the
    # CPU's (what matters is that this one is fixed): check the arithmetic on numbers that show a slip
    A_ = torch.tensor([[3.0, 1.0], [5.0, 2.0]])
    B_ = torch.tensor([[2.0, 1.0]])
    d = A.delta(A_, B_, 0.5)
    assert d.dtype == torch.float64 and d.tolist() == [[5.5, 2.0]]
    # products of float32 numbers are exact in float64: 1 + 2^-23 squared keeps its 2^-46 term
    x = 1 + 2.0 ** -23
    assert A.delta(torch.tensor([[x]]), torch.tensor([[x]]), 1.0).item() == x * x


def test_a_materialised_adapter_is_reused_and_made_again_when_it_changes(tiny_family, tmp_path, cache):
    base = tiny_family["base"]
    adapter = _save(_peft_model(base), tmp_path / "adapter")
    path = M.resolve(f"{base}+{adapter}")
    stamp = os.path.join(path, A.STAMP)
    first = os.stat(stamp).st_mtime_ns
    A._FRESH.clear()                       # a new process: the stamp decides
    assert M.resolve(f"{base}+{adapter}") == path and os.stat(stamp).st_mtime_ns == first
    _save(_peft_model(base, seed=9), tmp_path / "adapter")   # the adapter changes in place
    path2 = M.resolve(f"{base}+{adapter}")
    assert path2 != path                   # keyed by the adapter's digest
    w1, w2 = _weights(path), _weights(path2)
    assert not torch.equal(w1["model.layers.0.self_attn.q_proj.weight"], w2["model.layers.0.self_attn.q_proj.weight"])


def test_an_adapter_merges_like_any_expert(tiny_family, tmp_path, cache):
    from core import service
    base = tiny_family["base"]
    adapter = _save(_peft_model(base), tmp_path / "adapter")
    out = tmp_path / "merged"
    service.merge({"merge_method": "task_arithmetic", "base_model": base,
                   "models": [{"model": f"{base}+{adapter}", "parameters": {"weight": 0.5}}],
                   "parameters": {"lambda": 1.0}, "dtype": "float32"}, out_dir=str(out))
    got, b, e = _weights(str(out)), _weights(base), _weights(M.resolve(f"{base}+{adapter}"))
    k = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(got[k], b[k] + 0.5 * (e[k] - b[k]))


@pytest.mark.parametrize("edit, needle", [
    (lambda cfg: cfg.update(peft_type="IA3"), "IA3 adapter; only LoRA"),
    (lambda cfg: cfg.update(use_dora=True), "DoRA"),
])
def test_other_peft_methods_are_refused_in_one_sentence(tiny_family, tmp_path, cache, edit, needle):
    base = tiny_family["base"]
    adapter = _save(_peft_model(base), tmp_path / "adapter")
    path = os.path.join(adapter, "adapter_config.json")
    with open(path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(UserError, match=needle):
        M.resolve(f"{base}+{adapter}")
    assert not os.path.exists(cache / "from-adapter") or not os.listdir(cache / "from-adapter")


def test_an_adapter_of_another_model_or_no_adapter_is_refused(tiny_family, tmp_path, cache):
    base, deep = tiny_family["base"], tiny_family["deep"]
    adapter = _save(_peft_model(deep), tmp_path / "adapter")    # a 3-layer model's adapter: layer 2 is extra
    with pytest.raises(UserError, match="adapts 'model.layers.2.mlp.down_proj', which the base .* does not have"):
        M.resolve(f"{base}+{adapter}")
    with pytest.raises(UserError, match="has no adapter_config.json, so it is not a PEFT adapter folder"):
        M.resolve(f"{base}+{tiny_family['math']}")
    os.remove(os.path.join(adapter, "adapter_model.safetensors"))
    open(os.path.join(adapter, "adapter_model.bin"), "wb").close()
    with pytest.raises(UserError, match="pickled adapter_model.bin, which is refused"):
        M.resolve(f"{base}+{adapter}")
    # nothing half-written is left in the cache after a refusal
    left = os.listdir(cache / "from-adapter") if os.path.isdir(cache / "from-adapter") else []
    assert [x for x in left if x.startswith(".")] == []


def test_split_ref_reads_mergekit_syntax(tmp_path):
    assert A.split_ref("org/base+org/lora") == ("org/base", "org/lora")
    assert A.split_ref("zoo:base") is None
    assert A.split_ref("a+b+c") is None                  # mergekit refuses two '+' as well
    odd = tmp_path / "c+model"
    odd.mkdir()
    assert A.split_ref(str(odd)) is None                 # a folder named with '+' stays a folder
