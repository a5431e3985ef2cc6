"""checkpoint: the one reader, the one writer, names of tensors, names in messages."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from core import checkpoint as M
from core.checkpoint import headers, writer
from core.checkpoint.naming import point_names, point_of, tensor_order
from core.errors import UserError, quoted


def test_reader_gives_the_stored_tensors_from_the_inspected_header(tiny_family, monkeypatch):
    info = M.inspect(tiny_family["safety"])

    def no_second_parse(*a, **k):
        raise AssertionError("the header was parsed again")
    monkeypatch.setattr(headers, "read_safetensors_header", no_second_parse)
    want = load_file(os.path.join(tiny_family["safety"], "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    with M.Reader(info) as r:
        for k, v in want.items():
            assert torch.equal(r.get(k), v), k
        assert torch.equal(r.read_rows(name, 3, 7), want[name][3:7])
        assert r.get(name, torch.float16).dtype == torch.float16
        staging = torch.empty(want[name].numel() * 4, dtype=torch.uint8)
        view = r.read(name, staging)
        assert torch.equal(view, want[name]) and view.untyped_storage().data_ptr() == staging.data_ptr()


def test_folder_is_written_whole_or_not_at_all(tmp_path):
    out = str(tmp_path / "m")
    with pytest.raises(KeyboardInterrupt):
        with writer.Folder(out) as f:
            (tmp_path / os.path.basename(f.tmp) / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match=r"^Could not write the merged model to '.*/m' \(disk full\); nothing was kept\.$"):
        with writer.Folder(out):
            raise OSError(28, "disk full")
    assert os.listdir(tmp_path) == []
    for text in ("old", "new"):                 # the second commit swaps the first folder out
        with writer.Folder(out) as f:
            with open(os.path.join(f.tmp, "a.txt"), "w") as fh:
                fh.write(text)
            f.commit()
    assert os.listdir(tmp_path) == ["m"] and open(os.path.join(out, "a.txt")).read() == "new"


def test_model_card_says_how_the_model_was_made():
    card = writer.model_card(title=None, method="ties", label="TIES", summary="Trim, elect, average.",
                             dtype="bfloat16", base="org/base", parents=[("org/a", {"weight": 0.5}), ("/x/b", {})],
                             params={"lambda": 0.9}, notes=["a note"], recipe_yaml="merge_method: ties\n")
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "- org/base\n- org/a\n" in card and "/x/b\n" not in card.split("---")[1]   # local folders are no Hub ids
    for line in ("# Merged model", "* base: `org/base`", "* `org/a` (weight=0.5)", "* `/x/b`", "* lambda: 0.9",
                 "* a note", "```yaml\nmerge_method: ties\n```"):
        assert line in card, line
    assert "by **TIES** (`ties`) in bfloat16." in card


def test_points_and_walk_order_of_tensor_names():
    assert point_names(2) == ["embed", "layer 0", "layer 1", "norm", "lm_head"]
    assert [point_of(n) for n in ("model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight",
                                  "model.norm.weight", "lm_head.weight", "model.rotary_emb.inv_freq")] == \
        ["embed", "layer 3", "norm", "lm_head", None]
    names = ["lm_head.weight", "model.layers.10.mlp.up_proj.weight", "model.norm.weight",
             "model.layers.2.self_attn.q_proj.weight", "model.embed_tokens.weight"]
    assert sorted(names, key=tensor_order) == ["model.embed_tokens.weight", "model.layers.2.self_attn.q_proj.weight",
                                               "model.layers.10.mlp.up_proj.weight", "lm_head.weight",
                                               "model.norm.weight"]


def test_names_from_files_stay_on_one_line(tiny_family, tmp_path, write_model):
    assert quoted("up\nproj") == "'up\\nproj'" and quoted("naïve 模型") == "'naïve 模型'" and quoted(3) == "'3'"
    base = M.inspect(tiny_family["base"])
    tensors = load_file(os.path.join(tiny_family["base"], "model.safetensors"))
    odd = write_model(tmp_path / "odd", {**tensors, "x\ny": torch.zeros(2)})   # one tensor more, named oddly
    rep = M.compatibility(base, [M.inspect(odd)])
    assert not rep.ok and "\n" not in rep.sentence() and "'x\\ny'" in rep.sentence()


def test_fingerprint_follows_weights_and_config_not_provenance(tmp_path, write_model):
    """Cached LED scores and ACM statistics are filed under the fingerprint: the same weights under
    another rope_theta must not reuse them, a copy written elsewhere (or by another transformers) must."""
    w = {"model.embed_tokens.weight": torch.arange(12.0).reshape(4, 3)}
    a = headers.inspect(write_model(tmp_path / "a", w, rope_theta=10000.0))
    copy = headers.inspect(write_model(tmp_path / "b", w, rope_theta=10000.0, _name_or_path="/elsewhere",
                                       transformers_version="9.9"))
    other_cfg = headers.inspect(write_model(tmp_path / "c", w, rope_theta=500000.0))
    other_w = headers.inspect(write_model(tmp_path / "d", {"model.embed_tokens.weight": torch.arange(12.0).reshape(4, 3) + 0.5},
                                          rope_theta=10000.0))
    assert a.fingerprint() == copy.fingerprint()
    assert len({a.fingerprint(), other_cfg.fingerprint(), other_w.fingerprint()}) == 3


def test_compatibility_of_matching_tensors_builds_no_layout(tiny_family, monkeypatch):
    """Building an architecture's layout imports its modeling code and builds it on the meta device (~10 s
    of a 15 s Task Arithmetic merge of a 0.5B model); experts with the base's names and shapes need none."""
    import sys
    from core.checkpoint import compat
    layout = sys.modules["core.checkpoint.layout"]     # the package exports a function of that name
    built = []
    monkeypatch.setattr(layout, "_CACHE", {})
    monkeypatch.setattr(layout, "_build", lambda info: built.append(info.ref) or layout._fallback(info))
    base = headers.inspect(tiny_family["base"])
    rep = compat.compatibility(base, [headers.inspect(tiny_family["safety"]), headers.inspect(tiny_family["math"])])
    assert rep.ok and built == []
    # a grown vocabulary is a shape that differs: then the layout says which tensors are the vocabulary
    rep = compat.compatibility(base, [headers.inspect(tiny_family["grown"])])
    assert rep.ok and rep.vocab_extra == {tiny_family["grown"]: 6} and tiny_family["base"] in built


def test_tied_and_untied_text_configs_are_not_taken_for_matching_tensors(tmp_path, write_model):
    """Multimodal configs keep tie_word_embeddings under text_config: the fast path must see it there."""
    from core.checkpoint import compat
    w = {"model.embed_tokens.weight": torch.zeros(4, 3)}
    a = headers.inspect(write_model(tmp_path / "a", w, text_config={"tie_word_embeddings": True}))
    b = headers.inspect(write_model(tmp_path / "b", w, text_config={"tie_word_embeddings": False}))
    c = headers.inspect(write_model(tmp_path / "c", w, text_config={"tie_word_embeddings": True}))
    assert not compat._same_tensors(a, b) and compat._same_tensors(a, c)
