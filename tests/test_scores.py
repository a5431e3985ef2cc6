"""core.scores: the one cache under LED's scores and ACM's MI."""
from __future__ import annotations

import os

import core
from core.methods.led import importance
from core.scores import Cache


def test_keys_are_what_they_were_so_old_cache_files_are_found():
    # the LED data hash of these rows before the cache moved to core/scores.py
    rows = [{"prompt": "p1", "response": "r1"}, {"prompt": "naïve", "response": "x"}]
    assert importance.data_hash(rows, None, dtype="float32", max_length=512) == "ac310311d59f23eb"


def test_data_hash_follows_the_rows_the_knobs_and_the_tokenizer_files(tmp_path):
    c = Cache("test", "v1")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    h = c.data_hash([["a", "b"]], str(tok), n=2)
    assert h == c.data_hash([["a", "b"]], str(tok), n=2) and len(h) == 16
    assert h != c.data_hash([["a", "c"]], str(tok), n=2)
    assert h != c.data_hash([["a", "b"]], str(tok), n=3)
    assert h != Cache("test", "v2").data_hash([["a", "b"]], str(tok), n=2)
    (tok / "chat_template.jinja").write_text("{{ x }}")     # a chat template decides the ids too
    assert h != c.data_hash([["a", "b"]], str(tok), n=2)


def test_writes_are_atomic_and_a_read_only_folder_only_costs_a_recomputation(tmp_path, monkeypatch):
    monkeypatch.setattr(core, "CACHE_DIR", str(tmp_path / "cache"))
    c = Cache("test", "v1")
    assert c.write("k", ".txt", lambda tmp: open(tmp, "w").write("done"))
    assert open(c.path("k", ".txt")).read() == "done" and os.listdir(c.folder()) == ["k.txt"]

    def fails(tmp):
        open(tmp, "w").write("half")
        raise OSError(28, "disk full")
    assert not c.write("j", ".txt", fails)
    assert os.listdir(c.folder()) == ["k.txt"]              # no half file, no temp file
    assert c.remember_new("k", lambda: 1) == 1 and c.remember_new("k", lambda: 2) == 1
    c.clear_memory()
    assert c.remembered("k") is None
