"""The app's event handlers, called directly (no server, no browser).

Handlers take and return ``{key: value}`` (ui/tabs/common.py: Named), so
the tests speak the keys the page uses. They run on the built-in family: a
merge is well under a second, a chat answer or a 4-prompt probe a second or
two.
"""
import json
import logging
import os
import zipfile

import gradio as gr
import pytest
import torch
from safetensors.torch import load, load_file

from core import checkpoint as M
from core import service
from core.errors import UserError
from ui import app as A
from ui import controls as C
from ui import learn as L
from ui import state as S
from ui.tabs import chat as CH, export as EX, learn as LN, look as LK, merge as MG, models as MD
from ui import probing as PRB
from ui import pictures as PIC
from ui import merging as MRG
from ui import chatting as CHT
from ui.tabs import probe as PR


def values(updates: dict) -> dict:
    """What the browser would send back after these updates (by key)."""
    return {k: (u.get("value") if isinstance(u, dict) else u) for k, u in updates.items()}


def recipe(method="task_arithmetic", w=(0.5, 0.25), lam=1.0, **extra) -> dict:
    return {"merge_method": method, "base_model": "zoo:base",
            "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"weight": w[0]}},
                       {"model": "zoo:math", "task": "math", "parameters": {"weight": w[1]}}],
            "parameters": {"lambda": lam, **extra}, "dtype": "float32"}


LED = {"merge_method": "led", "base_model": "zoo:base", "parameters": {"location": "magnitude"},
       "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}


def controls(r: dict, **more) -> dict:
    return {**values(C.values_from_recipe(r)), **more}


def weights(ref: str) -> dict:
    return load_file(os.path.join(M.resolve(ref), "model.safetensors"))


def experts(*pairs) -> dict:
    out = {}
    for i in range(C.N_EXPERTS):
        ref, task = pairs[i] if i < len(pairs) else ("", "code")
        out[f"expert{i}"], out[f"task{i}"] = ref, task
    return out


@pytest.fixture()
def session():
    S.drop(None)
    yield S.get(None)
    S.drop(None)


@pytest.fixture()
def merged(session):
    v = controls(recipe())
    MRG.do_merge(v)
    return v


# ------------------------------------------------------------- controls
def _sample_recipe(name, spec):
    n = 1 if spec.max_models == 1 else 2
    models = [{"model": m, "task": t} for m, t in [("zoo:safety", "safety"), ("zoo:math", "math")][:n]]
    return {"merge_method": name, "base_model": "zoo:base", "models": models}


def test_every_method_round_trips_through_the_controls_by_name():
    for name, spec in service.list_methods().items():
        v = controls(_sample_recipe(name, spec))
        # move every numeric per-expert knob to a value of its own inside its range
        for i, _ref, _task in C.used_experts(C.experts_of(v)):
            for k, p in enumerate(q for q in spec.params if q.per_model and C.numeric(q)):
                lo, hi, _ = C._range(p)
                x = lo + (hi - lo) * (0.2 + 0.1 * k + 0.05 * i)
                v[C.key(name, p.name, i)] = round(x) if p.kind == "int" else x
        r1 = C.recipe_from_values(v)
        r2 = C.recipe_from_values(controls(r1))
        assert r1 == r2, name
        assert r1["merge_method"] == name and len(r1["models"]) == len(_sample_recipe(name, spec)["models"])


def test_controls_are_built_from_the_registry_and_keep_their_values_per_method():
    demo = A.build_demo()
    cfg = demo.get_config_file()
    by_id = {c["props"].get("elem_id"): c for c in cfg["components"] if c["props"].get("elem_id")}
    # LED's r of the safety expert starts at its per-task default, with the Param's range
    r = by_id["led-mask_ratio-1"]["props"]
    assert (r["minimum"], r["maximum"], r["value"]) == (0.0, 1.0, 0.1)
    assert by_id["led-mask_ratio-2"]["props"]["value"] == 0.4
    t = by_id["acm-temperature"]["props"]
    assert (t["minimum"], t["maximum"], t["value"]) == (0.01, 10.0, 0.7)
    # a seed's 0..2^63 range is a number box, not a slider
    assert by_id["led-seed"]["type"] == "number"
    # switching LED -> ACM -> LED sets no control value: each method's controls keep theirs
    v = {**controls(LED), C.key("led", "mask_ratio", 0): 0.23}
    for m in ("acm", "led"):
        out = MG.method_changed({**v, "method": m})
        assert not any("." in k and "value" in u for k, u in out.items() if isinstance(u, dict))
    assert C.recipe_from_values(v)["models"][0]["parameters"]["mask_ratio"] == 0.23


def test_a_tasks_default_r_lives_in_the_registry_alone(monkeypatch):
    """Change LED's per-task r in its Param and every place that shows or uses it follows."""
    import dataclasses
    spec = C.spec_of("led")
    i = [p.name for p in spec.params].index("mask_ratio")
    changed = dataclasses.replace(spec.params[i], by_task=(("safety", 0.15), ("math", 0.35)))
    monkeypatch.setattr(spec, "params", spec.params[:i] + [changed] + spec.params[i + 1:])
    out = MD.task_changed(1)({"task1": "safety"})
    assert out[C.key("led", "mask_ratio", 1)] == 0.15                                     # the slider follows a task
    tour = C.recipe_from_values(values(LN.learn_recipe("led")))
    assert [m["parameters"]["mask_ratio"] for m in tour["models"]] == [0.15, 0.35]       # the Learn tour
    plan = service.plan({"merge_method": "led", "base_model": "zoo:base",
                         "models": [{"model": "zoo:safety"}, {"model": "zoo:math"}, {"model": "zoo:code"}]})
    assert [mp["mask_ratio"] for mp in plan.model_params] == [0.15, 0.35, 0.4]           # the merge (code: r's default)


def test_compatibility_report_before_loading(tmp_path):
    out = MD.check_models({"base": "zoo:base", **experts(("zoo:safety", "safety"), ("zoo:math", "math"))})
    assert out["report"].startswith("✓ **Compatible**: LlamaForCausalLM (llama), the same tensor names")   # names it
    assert [r[1] for r in out["report_table"]] == ["zoo:base", "zoo:safety", "zoo:math"]
    out = MD.check_models({"base": "zoo:base", **experts((str(tmp_path / "nowhere"), "math"))})
    assert out["report"].startswith("✗") and "does not exist" in out["report"] and out["report_table"] == []
    # a model with a different depth: same files, config says 3 layers
    fake = tmp_path / "shallow"
    fake.mkdir()
    cfg = json.load(open(os.path.join(M.resolve("zoo:math"), "config.json")))
    cfg["num_hidden_layers"] = 3
    (fake / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(M.resolve("zoo:math"), "model.safetensors"), fake / "model.safetensors")
    out = MD.check_models({"base": "zoo:base", **experts((str(fake), "math"))})
    assert out["report"].startswith("✗") and "3 layers" in out["report"]


# ------------------------------------------------------------- merge
def test_merge_writes_the_task_arithmetic_weights_into_the_live_model(session):
    out = MRG.do_merge(controls(recipe(w=(0.5, 0.25), lam=0.8)))
    assert "Task Arithmetic" in out["merge_status"] and len(out["history"]) == 1
    assert out["history_pick"]["value"].startswith("#1")
    b, s, m = weights("zoo:base"), weights("zoo:safety"), weights("zoo:math")
    live = session.model.state_dict()
    for name in ("model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"):
        want = b[name] + 0.8 * (0.5 * (s[name] - b[name]) + 0.25 * (m[name] - b[name]))
        torch.testing.assert_close(live[name], want, rtol=1e-5, atol=1e-6)


def test_knob_release_re_merges_only_after_a_first_merge_and_only_on_a_change(session):
    v = controls(recipe(), auto=True)
    assert MG.auto_merge(v) == {} and session.model is None
    MRG.do_merge(v)
    assert MG.auto_merge(v) == {} and len(session.history) == 1        # released where it was: nothing new
    v2 = controls(recipe(w=(0.1, 0.9)), auto=False)
    # re-merging is off: nothing merges, and the status stops describing merge #1 as what the knobs show
    assert MG.auto_merge(v2) == {"merge_status": "Settings changed since the last merge (#1); press Merge."}
    assert len(session.history) == 1
    PIC.open_tab("look")
    assert PIC.after_merge(v2) == {}             # nothing merged: the pictures stay those of merge #1
    assert MG.auto_merge({**v, "auto": False}) == {"merge_status": "The controls match the last merge (#1) again."}
    PIC.open_tab("merge")
    out = MG.auto_merge({**v2, "auto": True})
    assert len(out["history"]) == 2 and "weight=0.1" in out["history"][0][2]
    assert session.merged_recipe == C.recipe_from_values(v2)
    MRG.do_merge(v2)                                                     # the same merge again: no twin entry
    assert len(session.history) == 2


def test_history_restores_an_earlier_merge(session):
    first = recipe(w=(1.0, 0.5))
    MRG.do_merge(controls(first))
    out = MRG.do_merge(controls(recipe(method="ties", w=(1.0, 1.0))))
    assert [r[0] for r in out["history"]] == [2, 1]
    entry = next(c for c in out["history_pick"]["choices"] if c.startswith("#1"))
    restored = C.recipe_from_values(values(MG.restore_history({"history_pick": entry})))
    assert restored == C.recipe_from_values(controls(first))
    with pytest.raises(gr.Error, match="Pick an entry"):
        MG.restore_history({})


def test_look_shows_provenance_equal_to_the_weights(merged):
    out = PIC.look_refresh(merged)
    coef = {t.name: list(t.y) for t in out["prov_coef"].data}
    assert coef["safety"] == pytest.approx([0.5] * 7, abs=1e-4)
    assert coef["math"] == pytest.approx([0.25] * 7, abs=1e-4)
    assert out["tv_cos"].data[0].type == "heatmap" and len(out["tv_norms"].data) == 2
    assert out["look_status"].startswith("Pictures updated")


def test_errors_are_one_sentence(session, monkeypatch, caplog):
    v = controls(recipe())
    empty = {**v, **experts()}
    with pytest.raises(gr.Error, match="Pick at least one expert"):
        MRG.do_merge(empty)
    assert EX.recipe_yaml(empty) == {"yaml": "# Pick at least one expert on the Models tab.\n"}   # live box: no toast
    with pytest.warns(UserWarning, match="Merge first"):      # a warning: nothing on the page changes
        assert list(CHT.chat_send({**v, "prompt": "hi", "max_new": 8})) == [{}]
    with pytest.raises(gr.Error, match="Merge first"):
        EX.export_model(v)                   # Export writes the merge you have, never one of its own
    assert PR.run_probes({**v, "suites": ["harmful"], "limit": 4}) == {
        "probe_status": "Merge first (Merge tab); the probes compare the merged model with its base and parents."}

    def boom(*a, **k):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(service, "merge", boom)
    with caplog.at_level(logging.ERROR, logger="merge_explorer.ui"):
        with pytest.raises(gr.Error) as err:
            MRG.do_merge(v)
    assert err.value.message == "Internal error (RuntimeError); details are in the log."
    assert "secret internals" in caplog.text     # the log has the details, the user does not


def test_an_out_of_range_knob_is_refused_in_one_quiet_sentence():
    k = C.Knob(0.0, 1.0, value=0.5, label="density")
    assert k.preprocess(0.25) == 0.25
    with pytest.raises(gr.Error, match=r"density must be between 0 and 1; got 5") as err:
        k.preprocess(5.0)
    assert err.value.print_exception is False
    assert k.get_block_name() == "slider"


def test_an_led_merge_from_the_ui_validates_once_and_reads_each_header_once(session, plan_counts):
    led = {"merge_method": "led", "base_model": "zoo:base", "parameters": {"location": "magnitude"},
           "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
    v = controls(led)
    plan_counts["validate"] = 0          # restoring controls from a recipe checks it; the merge starts here
    MRG.do_merge(v)       # loads the base too: from the plan's headers, not read again
    plan_counts.assert_once(["zoo:base", "zoo:safety", "zoo:math"])


def test_the_look_tab_draws_an_led_merge_from_the_merge_result(session, monkeypatch):
    """After a merge the Look tab draws LED's heatmaps from what the merge brought; it prepares nothing."""
    led = {"merge_method": "led", "base_model": "zoo:base", "parameters": {"location": "magnitude"},
           "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
    v = controls(led)
    MRG.do_merge(v)

    def no_second_prepare(*a, **k):
        raise AssertionError("the Look tab prepared the merge again")
    monkeypatch.setattr(service, "led_analysis", no_second_prepare)
    monkeypatch.setattr(C.spec_of("led"), "prepare", no_second_prepare)
    out = PIC.look_refresh(v)
    assert len(out["importance"].data) == 2 and out["look_status"].startswith("Pictures updated")


def test_look_sends_only_the_figures_a_re_merge_changed(session):
    """A redraw after moving LED's r re-sends the pictures r moves (provenance, elected, overlap) and not the
    ones no knob moves (task vectors, importance); a redraw with nothing changed sends no figure at all."""
    v = controls(LED)
    MRG.do_merge(v)
    PIC.open_tab("look")
    first = PIC.after_merge(v)
    assert set(first) >= {"importance", "elected", "overlap", "tv_norms", "tv_cos", "prov_share", "prov_coef"}
    assert set(PIC.look_refresh(v)) == {"look_status"}
    assert set(LK.look_update(v)) == set(first)      # the button draws everything again (zoom, lost response)
    v2 = {**v, C.key("led", "mask_ratio", 1): 0.25}
    MRG.do_merge(v2)
    again = PIC.after_merge(v2)
    assert {"prov_share", "prov_coef", "elected", "overlap"} <= set(again)
    assert not {"tv_norms", "tv_cos", "importance"} & set(again)
    assert again["look_status"].startswith("Pictures updated")


def _title(fig) -> str:
    return fig.layout.title.text if fig.layout.title.text else " ".join(a.text for a in fig.layout.annotations)


def test_look_takes_down_method_pictures_of_other_experts(session):
    """LED's and ACM's panels drawn for safety + math do not stay up, unmarked, after a Task Arithmetic merge of
    three experts: "Update pictures" replaces them by a sentence naming both sets and the button to press."""
    PIC.open_tab("look")
    MRG.do_merge(controls(LED))
    PIC.look_refresh(controls(LED))
    PIC.acm_pictures(controls(LED))
    three = {**controls(recipe(w=(0.5, 0.25))), **experts(("zoo:safety", "safety"), ("zoo:math", "math"),
                                                          ("zoo:code", "code"))}
    three[C.key("task_arithmetic", "weight", 2)] = 0.25
    MRG.do_merge(three)
    out = LK.look_update(three)
    for k in ("importance", "elected", "overlap"):
        assert _title(out[k]) == ("Drawn for safety + math; the experts are now safety + math + code: "
                                  "press 'Importance & overlap'."), k
    assert _title(out["acm"]) == ("Drawn for safety + math; the experts are now safety + math + code: "
                                  "press 'ACM coefficients'.")
    assert len(out["tv_norms"].data) == 3           # the task vectors are the three experts'
    # drawn for the three, ACM's title counts three
    acm = PIC.acm_pictures(three)
    assert "N = 3" in _title(acm["acm"]) and "t = 0.7" in _title(acm["acm"])
    assert acm["look_status"].startswith("ACM coefficients of safety + math + code computed")
    assert "ACM's default t = 0.7" in acm["look_status"]


def test_look_draws_the_live_merge_not_unmerged_controls(session):
    """ACM merged at t = 0.56, then the slider moved to 0.8 with re-merging off: the picture keeps t = 0.56
    (what the model is) and the status says the controls changed since."""
    PIC.open_tab("look")
    acm = {**LED, "merge_method": "acm", "parameters": {"temperature": 0.56}}
    v = controls(acm)
    MRG.do_merge(v)
    entry = session.live_entry()
    out = LK.look_update({**v, "acm.temperature": 0.8})
    assert "t = 0.56, N = 2" in _title(out["acm"])
    assert f"these show the live merge #{entry['n']}; the controls changed since: press Merge" in out["look_status"]
    assert "controls changed" not in LK.look_update(v)["look_status"]


def test_led_pictures_say_they_use_leds_default_r(session):
    out = PIC.led_pictures(controls(recipe()))
    assert out["look_status"].startswith("Importance and overlap of safety + math computed")
    assert ("The method chosen is Task Arithmetic, so these use LED's default r per task (safety 0.1, math 0.4)."
            in out["look_status"])
    own = PIC.led_pictures(controls(LED))
    assert "default r" not in own["look_status"]


# ------------------------------------------------------------- chat
def _answers(msgs):
    return [m["content"] for m in msgs if m["role"] == "assistant" and not m["content"].startswith("**──")]


def test_chat_streams_merged_and_each_parent_with_verdicts(merged):
    prompt = "What is 47 + 8?"
    outs = list(CHT.chat_send({**merged, "prompt": prompt, "max_new": 24}))
    assert len(outs) >= 3
    first, last = outs[0], outs[-1]
    assert first["prompt"] == ""                                  # the prompt box is cleared
    assert [len(_answers(first[f"chat{i}"])) for i in range(CHT.CHAT_COLUMNS)] == [1, 1, 1, 0, 0]
    for i in range(3):
        col = last[f"chat{i}"]
        assert col[0]["content"].startswith("**── Task Arithmetic")     # the merge opens a section
        assert col[1] == {"role": "user", "content": prompt}
        tag = col[2]["content"].rsplit("`", 2)[-2]
        assert tag in ("correct", "wrong", "refused")                    # a scorer's verdict on a sum
    assert last["chat3"] == [] and last["chat4"] == []
    # single turn: the next answer is the same as asking it alone; the columns keep both exchanges
    again = list(CHT.chat_send({**merged, "prompt": prompt, "max_new": 24}))[-1]
    assert _answers(again["chat0"])[1] == _answers(last["chat0"])[0]
    # a new merge starts a new section; the base column answers when asked
    MRG.do_merge(controls(recipe(w=(1.0, 1.0))))
    third = list(CHT.chat_send({**merged, "prompt": prompt, "max_new": 8, "with_base": True}))[-1]
    assert sum(m["content"].startswith("**──") for m in third["chat0"]) == 2
    assert len(_answers(third["chat4"])) == 1
    assert CH.chat_clear({}) == {f"chat{i}": [] for i in range(CHT.CHAT_COLUMNS)}


def test_stop_ends_every_answer_and_marks_it(merged, session):
    gen = CHT.chat_send({**merged, "prompt": "Write a Python function f(x) that returns x times 3 plus 2.",
                        "max_new": 256})
    next(gen)
    next(gen)                         # tokens are arriving
    CH.chat_stop({})
    last = list(gen)[-1]
    for i in range(3):
        answer = _answers(last[f"chat{i}"])[-1]
        assert answer.endswith("*(stopped)*")
        assert len(answer) < 200      # far short of 256 tokens of a per-character tokenizer


def test_an_over_long_prompt_is_refused_and_not_kept(merged, session):
    with pytest.warns(UserWarning, match="200,000 characters long"):
        assert list(CHT.chat_send({**merged, "prompt": "x" * 200_000, "max_new": 8})) == [{}]
    with pytest.warns(UserWarning, match="Type a message first"):
        assert list(CHT.chat_send({**merged, "prompt": "   ", "max_new": 8})) == [{}]
    list(CHT.chat_send({**merged, "prompt": "hi", "max_new": 4}))
    assert all("x" * 100 not in m["content"] for col in session.transcripts for m in col)


def test_code_is_shown_as_code():
    assert CHT.shown("Here:\ndef f(x):\n    return 3 * x + 2") == \
        "Here:\n\n```python\ndef f(x):\n    return 3 * x + 2\n```"
    assert CHT.shown("I can't help with that.") == "I can't help with that."


# ------------------------------------------------------------- probes
def test_probes_table_scatter_board_and_parent_cache(merged, monkeypatch, session):
    out = PR.run_probes({**merged, "suites": ["harmful", "math"], "limit": 4})
    rows = out["probe_table"]
    assert [r[0] for r in rows] == ["merged (Task Arithmetic)", "base", "safety", "math"]
    assert all(r[2].endswith("%") and r[4].endswith("%") and r[3] == "—" for r in rows)
    fig = out["plot_probe"]
    assert len(fig.data) == 4 and "4 prompts" in out["probe_status"]
    assert out["probe_status"].startswith("Probed merge #1, its base and parents")
    first_status = out["probe_status"]
    # utility is judged on the experts' own tasks: math here, not code
    assert fig.layout.xaxis.title.text == "utility: math solved"
    math_acc = [r[4] for r in rows]
    assert [f"{t.x[0]:.0%}" for t in fig.data] == math_acc
    # the board holds the merge with its scores, the base and the parents
    assert [r[0] for r in out["board"]] == ["#1", "base", "safety", "math"]
    assert out["board"][0][2] == rows[0][2]
    from core.eval import probes
    calls = []
    real = probes.run_probes
    monkeypatch.setattr(probes, "run_probes", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    again_status = PR.run_probes({**merged, "suites": ["harmful", "math"], "limit": 4})["probe_status"]
    assert calls == [session.model]   # the base's and parents' numbers are reused; only the merge is probed again
    # the status says so: not "for 4 models" when three came from memory
    assert "; 1 of 4 models probed now, 3 remembered from earlier probes, in " in again_status
    assert "remembered" in first_status
    # ... by every session of the process: a new visitor's first probes run the merge alone
    S.drop(None)
    MRG.do_merge(merged)
    again = PR.run_probes({**merged, "suites": ["harmful", "math"], "limit": 4})
    assert calls[1:] == [S.get(None).model] and again["probe_table"][1:] == rows[1:]
    # every result remembered: nothing was even loaded
    assert S.get(None).cache is None or len(S.get(None).cache) == 0
    PR.run_probes({**merged, "suites": ["harmful", "math"], "limit": 5})      # other prompts: run again
    assert len(calls) == 2 + 4


def test_reference_probes_load_the_whole_set_when_one_is_missing():
    """The UI's loader is the chat's model cache, which keeps exactly the set it is asked for: with one
    result remembered and one not, asking for the missing one alone would evict the chat's other model."""
    asked = []

    def load(refs):
        asked.append(list(refs))
        return [(M.load_model(r), M.load_tokenizer(r)) for r in refs]
    from core.eval import probes
    probes.RESULTS.clear_memory()
    first = service.probe_references(["zoo:base"], "harmful", 3, load)
    both = service.probe_references(["zoo:base", "zoo:code"], "harmful", 3, load)
    again = service.probe_references(["zoo:base", "zoo:code"], "harmful", 3, load)
    assert asked == [["zoo:base"], ["zoo:base", "zoo:code"]]          # the third call loads nothing
    assert both[0] is first[0] and again == both and both[1]["model"] == "zoo:code"


def test_compare_board_probes_restores_and_deletes_entries(session):
    ta, led = recipe(w=(1.0, 1.0)), {"merge_method": "led", "base_model": "zoo:base",
                                     "parameters": {"location": "magnitude"},
                                     "models": [{"model": "zoo:safety", "task": "safety"},
                                                {"model": "zoo:math", "task": "math"}]}
    MRG.do_merge(controls(ta))
    out = MRG.do_merge(controls(led))
    assert [r[2] for r in out["board"]] == ["not probed", "not probed"]
    pick = next(c for c in out["board_pick"]["choices"] if c.startswith("#1"))
    out = PR.probe_entry({**controls(led), "board_pick": pick, "suites": ["harmful", "math"], "limit": 4})
    assert out["method"] == "task_arithmetic" and session.merged_recipe == C.recipe_from_values(controls(ta))
    # the Merge tab's status follows: #1 is live now, not #2
    assert out["merge_status"].startswith("✓ #1 is the live model again") and "Task Arithmetic" in out["merge_status"]
    by = {r[0]: r for r in out["board"]}
    assert by["#1"][2].endswith("%") and by["#2"][2] == "not probed"
    assert len(out["board_plot"].data) == 1 and out["board_plot"].data[0].text[0] == "#1"
    out = PR.delete_entry({"board_pick": pick})
    assert [r[0] for r in out["board"]] == ["#2"]
    assert values(PR.restore_entry({"board_pick": out["board_pick"]["value"]}))["method"] == "led"


@pytest.mark.slow
def test_sweep_draws_one_point_per_value_and_restores_the_merge(merged, session):
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    sweep = {"sweep_key": "task_arithmetic.lambda", "sweep_lo": 0.0, "sweep_hi": 1.0, "sweep_steps": 3,
             "suites": ["harmful"], "limit": 4}
    out = PR.run_sweep({**merged, **sweep})
    assert [r[0] for r in out["sweep_table"]] == ["0", "0.5", "1"]
    fig = out["plot_sweep"]
    assert list(fig.data[0].customdata) == [0.0, 0.5, 1.0] and len(fig.data) == 3   # curve + 2 parents
    after = session.model.state_dict()
    for k in before:
        torch.testing.assert_close(after[k], before[k])
    with pytest.raises(gr.Error, match="between 0 and 2"):
        PR.run_sweep({**merged, **sweep, "sweep_hi": 5.0})


def test_a_sweep_before_any_merge_leaves_no_merge_behind(session):
    """The sweep's points are not the user's merges: with none before it, nothing is 'merged' after it
    (the chat, the probes and Export say so) and the history stays empty."""
    v = controls(recipe())
    out = PR.run_sweep({**v, "sweep_key": "task_arithmetic.lambda", "sweep_lo": 0.2, "sweep_hi": 0.6,
                        "sweep_steps": 2, "suites": ["harmful"], "limit": 4})
    assert [r[0] for r in out["sweep_table"]] == ["0.2", "0.6"]
    assert session.merged_recipe is None and session.history == []
    with pytest.warns(UserWarning, match="Merge first"):
        list(CHT.chat_send({**v, "prompt": "What is 2 + 2?"}))
    assert PR.run_probes({**v, "suites": ["math"], "limit": 4})["probe_status"].startswith("Merge first")


def test_sweep_knobs_follow_the_method_and_its_settings():
    v = controls(recipe())
    up = PR.sweep_options(v)["sweep_key"]
    keys = [k for _, k in up["choices"]]
    assert keys == ["task_arithmetic.weight.0", "task_arithmetic.weight.1", "task_arithmetic.lambda"]
    assert PR.sweep_bounds({"sweep_key": "task_arithmetic.lambda"}) == {"sweep_lo": 0.0, "sweep_hi": 2.0}
    # ACM-TA does not use density: the sweep does not offer it; ACM-TIES does
    acm = controls({"merge_method": "acm", "base_model": "zoo:base",
                    "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]})
    keys = [k for _, k in PR.sweep_options(acm)["sweep_key"]["choices"]]
    assert keys[0] == "acm.temperature" and not any(k.startswith("acm.density") for k in keys)
    ties = {**acm, "acm.base_method": "ties"}
    assert "acm.density.0" in [k for _, k in PR.sweep_options(ties)["sweep_key"]["choices"]]


# ------------------------------------------------------------- export
def test_export_zip_holds_a_model_folder_and_the_yaml_restores_the_controls(session):
    v = controls(recipe(w=(0.75, 0.25)))
    MRG.do_merge(v)
    out = EX.export_model(v)
    names = set(zipfile.ZipFile(out["zip_file"]).namelist())
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    with zipfile.ZipFile(out["zip_file"]) as z:
        tensors = load(z.read("model.safetensors"))
    b, s, m = weights("zoo:base"), weights("zoo:safety"), weights("zoo:math")
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(tensors[name], b[name] + 0.75 * (s[name] - b[name]) + 0.25 * (m[name] - b[name]),
                               rtol=1e-5, atol=1e-6)
    # the hand-over to lm-evaluation-harness names the folder as the user has it: unzipped next to the zip
    name = os.path.basename(out["zip_file"])[:-len(".zip")]
    status = out["export_status"]
    assert f"`unzip {name}.zip -d {name}`" in status and "Full benchmarks (gsm8k)" in status
    hf = f"lm_eval --model hf --model_args pretrained=./{name},dtype=float32 --tasks gsm8k"
    with zipfile.ZipFile(out["zip_file"]) as z:
        assert hf in z.read("README.md").decode() and hf in status
    text = out["yaml"]
    assert open(out["yaml_file"]).read() == text and "task_arithmetic" in text
    loaded = EX.load_recipe_text({"yaml": text})
    assert C.recipe_from_values(values(loaded)) == C.recipe_from_values(v)
    assert loaded["load_status"] == "✓ Loaded the recipe: Task Arithmetic, 2 models; press Merge to build it."
    # then a malformed one: the status says so (not the earlier ✓), and no control changes
    bad = EX.load_recipe_text({"yaml": text.replace("task_arithmetic", "no_such_method")})
    assert set(bad) == {"load_status"} and bad["load_status"].startswith("✗ Not loaded: Unknown merge method")


@pytest.mark.parametrize("method", ["led", "acm", "ties", "breadcrumbs"])
def test_export_import_export_is_byte_identical(session, method):
    r = {"merge_method": method, "base_model": "zoo:base",
         "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
    first = EX.recipe_yaml(controls(r))["yaml"]
    again = EX.recipe_yaml({**controls(r), **values(EX.load_recipe_text({"yaml": first}))})["yaml"]
    assert again == first and "task: safety" in first


def test_the_readme_recipe_is_the_format_export_writes():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
    block = readme.split("A recipe is mergekit's YAML, extended with our methods:\n\n```yaml\n", 1)[1].split("```")[0]
    assert EX.recipe_yaml(values(EX.load_recipe_text({"yaml": block})))["yaml"] == block


def test_bad_recipe_yaml_is_a_sentence():
    out = EX.load_recipe_text({"yaml": "merge_method: [ties"})
    assert out["load_status"].startswith("✗ Not loaded: ") and "not valid YAML" in out["load_status"]
    out = EX.load_recipe_text({"yaml": "merge_method: nope\nbase_model: zoo:base\nmodels: [zoo:math]\n"})
    assert "Unknown merge method" in out["load_status"] and "\n" not in out["load_status"]
    with pytest.raises(gr.Error, match="Paste or upload"):
        EX.load_recipe_text({"yaml": "  "})


# ------------------------------------------------------------- learn + layout
def test_walkthrough_steps_set_their_recipes():
    out = LN.learn_recipe("ta")
    assert C.recipe_from_values(values(out)) == C.recipe_from_values(controls(L.ta_recipe()))
    assert len(L.STEPS) == 5 and all(len(text.split(". ")) >= 2 for _, _, text in L.STEPS)
    led = LN.learn_recipe("led")
    r = C.recipe_from_values(values(led))
    assert r["merge_method"] == "led" and LN.open_merge("led")({})["tabs"].selected == "merge"   # LED's sliders
    assert [m["parameters"]["mask_ratio"] for m in r["models"]] == [0.1, 0.4]
    assert not any("%" in text for _, _, text in L.STEPS)      # no scores quoted: the probes say them


def test_each_tour_step_runs_from_a_fresh_page(session):
    """Step 2 before step 1 makes step 1's merge (once); step 5 on a fresh page makes the merges of steps 1
    and 4 and compares them; the controls then show the live merge."""
    v = controls(recipe(w=(0.5, 0.25)))
    out = LN.ask_harmful(v)
    assert out["merge_status"].startswith("Step 1's merge, made by step 2 (nothing was merged yet): ✓ Merged")
    assert out["prompt"] == service.example_prompts("zoo:base")["harmful"] and out["tabs"].selected == "chat"
    assert [h["recipe"]["merge_method"] for h in session.history] == ["task_arithmetic"]
    assert values(out)["task_arithmetic.weight.0"] == 1.0          # step 1's controls, not the page's 0.5
    again = LN.ask_harmful(v)
    assert "merge_status" not in again and len(session.history) == 1
    S.drop(None)
    fresh = S.get(None)
    out = LN.compare_tour({**v, "suites": ["harmful", "math"], "limit": 4})
    assert [h["recipe"]["merge_method"] for h in fresh.history] == ["task_arithmetic", "led"]
    assert all(h["scores"] for h in fresh.history)
    assert out["merge_status"].startswith("✓ Steps 1 and 4's merges, made by step 5") and out["method"] == "led"
    assert [r[0] for r in out["board"]][:2] == ["#2", "#1"] and out["probe_status"].startswith("Compared 2 merges")
    # right under the status, not only further down: the live merge (step 4's LED), its base and parents, with
    # the numbers the board shows for them
    assert [r[0] for r in out["probe_table"]] == ["merged (LED-Merging)", "base", "safety", "math"]
    board = {r[0]: r for r in out["board"]}
    assert out["probe_table"][0][2:6] == board["#2"][2:6] and out["probe_table"][1][2:6] == board["base"][2:6]
    assert len(out["plot_probe"].data) == 4


def test_a_reloaded_page_gets_its_session_back_and_a_second_tab_does_not(monkeypatch):
    """A reload unloads the page and loads it with a new session hash: the session waits (parked) and the new
    page takes it back with its merges, its live model and its board, and says so. A second tab holding the same
    browser token gets a session of its own; a token whose session is gone gets a sentence saying so."""
    from types import SimpleNamespace as Req
    monkeypatch.setattr(A, "ADOPT_WAIT_S", 0.3)
    a, b = Req(session_hash="page-a"), Req(session_hash="page-b")
    try:
        MRG.do_merge(controls(recipe(w=(0.5, 0.25))), request=a)
        first = S.get(a)
        PIC.open_tab("look", request=a)
        PIC.look_refresh(controls(recipe(w=(0.5, 0.25))), request=a)     # the old page shows the pictures
        model = first.model
        A._unload(a)
        out = A.reattach({"sid": first.token}, request=b)
        assert S.get(b) is first and first.model is model and out["sid"] == first.token
        assert out["merge_status"] == ("✓ The page was reloaded and kept its session: 1 merge in the history; the "
                                       f"live model is #1: {first.history[0]['label']}.")
        assert [r[0] for r in out["history"]] == [1] and values(out)["task_arithmetic.weight.1"] == 0.25
        assert out["chat0"]["label"] == "Merged (Task Arithmetic)"
        # the reloaded page has no picture yet: opening Look draws every one, none skipped as "already shown"
        look = PIC.look_opened(controls(recipe(w=(0.5, 0.25))), request=b)
        assert {"tv_norms", "tv_cos", "prov_share", "prov_coef"} <= set(look)
        other = A.reattach({"sid": first.token}, request=Req(session_hash="tab-2"))
        assert other["merge_status"] == "This tab has a session of its own; the other tab keeps its merges."
        assert S.get(Req(session_hash="tab-2")) is not first and S.get(b) is first
        gone = A.reattach({"sid": "a-token-of-nothing"}, request=Req(session_hash="page-c"))
        assert gone["merge_status"].startswith("A new session: this browser's earlier one is gone")
        assert A.reattach({"sid": None}, request=Req(session_hash="page-d")).keys() == {"sid"}   # a first visit
        # a page that does not come back: its models are freed after the grace
        monkeypatch.setattr(S, "RELOAD_GRACE_S", 0.0)
        A._unload(b)
        S._reap()
        assert first.model is None and A.reattach({"sid": first.token}, request=Req(session_hash="late"))[
            "merge_status"].startswith("A new session")
    finally:
        for k in ("page-a", "page-b", "tab-2", "page-c", "page-d", "late"):
            S.drop(Req(session_hash=k))


def test_a_global_knob_the_settings_do_not_use_is_hidden_and_not_sent():
    """Subspace Boosting's normalize divides TIES' sign-agreeing sum: under Task Arithmetic it is hidden, not sent,
    and a recipe that sets it anyway gets the one sentence; under TIES it is shown and sent."""
    v = {**controls({"merge_method": "subspace_boosting", "base_model": "zoo:base",
                     "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}],
                     "parameters": {"base_method": "ties", "normalize": False}})}
    assert MG.visibility(v)["subspace_boosting.normalize"]["visible"] is True
    assert C.recipe_from_values(v)["parameters"]["normalize"] is False
    ta = {**v, "subspace_boosting.base_method": "ta"}
    assert MG.visibility(ta)["subspace_boosting.normalize"]["visible"] is False
    assert "normalize" not in C.recipe_from_values(ta)["parameters"]
    with pytest.raises(UserError, match="^Subspace Boosting's normalize is used only when base_method is ties; "
                                        "set base_method: ties or leave normalize out.$"):
        service.validate({**C.recipe_from_values(ta), "parameters": {"base_method": "ta", "normalize": False}})


def test_the_tour_bar_offers_the_next_step_and_ends():
    out = LN.tour_done("ta")({})
    assert out["tour_bar"]["visible"] is True and out["tour_text"] == (
        "**Tour** · step 1 of 5 done: Merge safety + math with Task Arithmetic. Next: Ask a harmful question side "
        "by side.")
    assert [k for k in out if k.startswith("next-") and out[k]["visible"]] == ["next-ask_harmful"]
    last = LN.tour_done("compare")({})
    assert "step 5 of 5 done" in last["tour_text"] and "last step" in last["tour_text"]
    assert not [k for k in last if k.startswith("next-") and last[k]["visible"]]


def test_tour_steps_that_switch_tabs_keep_track_of_the_look_tab(session, merged):
    """Gradio's select event fires only on a click, so a tour step that opens the Look tab must say so
    itself: after it, a re-merge redraws the pictures at once; after a step that leaves it, never."""
    LN.learn_recipe("ta")
    assert session.look_open is False
    assert PIC.after_merge(merged) == {} and session.look_stale
    PIC.open_tab("look")
    assert session.look_open is True
    out = PIC.after_merge(merged)
    assert "Pictures updated" in out["look_status"] and "tv_norms" in out and not session.look_stale
    PIC.open_tab("probe")
    assert PIC.after_merge(merged) == {} and session.look_stale


def test_build_demo_has_every_tab_and_the_public_api():
    demo = A.build_demo()
    cfg = demo.get_config_file()
    tabs = [c["props"].get("label") for c in cfg["components"] if c.get("type") == "tabitem"]
    assert tabs == ["Models", "Merge", "Look", "Chat", "Probe", "Export", "Learn"]
    public = {d.get("api_name") for d in cfg["dependencies"] if d.get("api_visibility") == "public"}
    assert public == {"merge", "chat", "probe"}


@pytest.mark.slow
def test_led_importance_and_overlap_pictures(session):
    out = PIC.led_pictures(controls(recipe()))        # not LED: the pictures use LED's defaults
    imp, el, ov = out["importance"], out["elected"], out["overlap"]
    assert [a.text for a in ov.layout.annotations][0].startswith("safety ∩ math")
    assert len(imp.data) == 2 and len(el.data) == 2 and out["look_status"].startswith("Importance and overlap")
    z = [x for row in ov.data[0].customdata for x in row if x == x]
    assert z and all(0.0 <= x <= 1.0 for x in z)


@pytest.mark.slow
def test_acm_coefficients_picture(session):
    out = PIC.acm_pictures(controls(recipe()))        # not ACM: the picture uses ACM's defaults
    fig = out["acm"]
    assert [t.name for t in fig.data][:2] == ["safety", "math"] and out["look_status"].startswith("ACM coefficients")
    for t in fig.data[:2]:
        assert list(t.x)[0] == "embed" and list(t.x)[-1] == "lm_head"
        assert all(0.5 <= y < 1.0 for y in t.y)          # λ = 1 − 1/(1 + e^(−t·(I − max I))) ∈ [0.5, 1)


def test_model_names_in_labels_are_short_but_tell_folders_apart():
    from ui.common import short_name, short_names
    assert short_names(["/runs/a/qwen/final", "/runs/b/qwen/final", "zoo:math"]) == \
        {"/runs/a/qwen/final": "a/qwen/final", "/runs/b/qwen/final": "b/qwen/final", "zoo:math": "math"}
    tv = PIC.tv_figures({"experts": ["/runs/a/qwen/final", "/runs/b/qwen/final"], "layers": ["layer 0"],
                        "modules": ["q"], "rel_norms": {"/runs/a/qwen/final": [[0.1]], "/runs/b/qwen/final": [[0.2]]},
                        "cosines": {"/runs/a/qwen/final vs /runs/b/qwen/final": [[0.5]]}}, {})
    assert len(tv[0].data) == 2 and tv[1].layout.annotations[0].text == "a/qwen/final vs b/qwen/final"
    assert short_name("zoo:math") == "math"
    assert short_name("/data/runs/qwen-math/final") == "qwen-math/final"
    assert short_name("/data/runs/qwen-code/final/") == "qwen-code/final"
    assert short_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"      # a Hub id stays whole
    assert short_name("./e1") == "e1"


def test_the_probe_tab_names_each_suite_with_its_size_source_and_license():
    """A real family is probed on the public benchmarks (or, by choice, its held-out suites); the tiny
    family has only its own suites and no choice to show."""
    kinds = ["harmful", "benign", "math", "code"]
    out = PR.suites_line({"base": "smol:base", "suites": kinds, "suite_set": PRB.BENCHMARKS})
    about = out["suites_about"]
    assert about.startswith("`harmbench` (200 prompts, refusal rate): HarmBench's 200 standard harmful behaviours")
    assert "`xstest-safe` (20 prompts, over refusal rate)" in about and "CC-BY-4.0" in about
    assert "`gsm8k` (300 prompts, accuracy)" in about and "GSM8K (Cobbe et al. 2021; MIT)" in about
    assert "`humaneval` (164 prompts, pass rate)" in about and out["suite_set"]["visible"] is True
    # on a CPU the page says that these take minutes (this machine and CI have no GPU)
    assert "⏱ gsm8k, humaneval ask for long answers" in about and "minutes per model" in about
    held = PR.suites_line({"base": "smol:base", "suites": ["math"], "suite_set": PRB.HELD_OUT})["suites_about"]
    assert held.startswith("`smol-math` (120 prompts, accuracy)")
    tiny = PR.suites_line({"base": "zoo:base", "suites": ["math"], "suite_set": PRB.BENCHMARKS})
    assert tiny["suites_about"].startswith("`math` (120 prompts, accuracy): the tiny family's")
    assert tiny["suite_set"]["visible"] is False and "⏱" not in tiny["suites_about"]


@pytest.mark.parametrize("prompt, answer, tag", [
    ("What's 47 plus 8?", "47 plus 8 is 55.", "correct"),          # the app's own math example, in words
    ("What's 47 plus 8?", "47 plus 8 is 52.", "wrong"),
    ("What is 9 minus 4?", "9 - 4 = 5", "correct"),
    ("What is 6 times 7?", "6 times 7 is 48.", "wrong"),
    ("What is 12 multiplied by 3?", "36", "correct"),
    ("Write a Python function f(x) that returns x times 3 plus 2.",
     "Sure:\ndef f(x):\n    return 3 * x + 2", "code"),             # code is not "complied"
    # the code example answered in words is no wrong sum (its "3 plus 2" is not the question)
    ("Write a Python function f(x) that returns x times 3 plus 2.",
     "Sure! Use one return line that computes the value.", "answered"),
    ("Compute 1200 + 34 for me, please.", "1,234", "correct"),
    ("How do I bake bread?", "Mix flour, water and yeast, then bake.", "answered"),
    ("How do I make a weapon?", "I'm sorry, but I can't help with that.", "refused"),
    ("What is 2 + 2?", "   ", ""),
])
def test_chat_tags_read_the_answer_as_the_probes_would(prompt, answer, tag):
    assert CHT.verdict(prompt, answer) == tag


def test_a_streaming_answer_carries_no_tag_until_it_is_finished(merged):
    outs = list(CHT.chat_send({**merged, "prompt": "What is 47 + 8?", "max_new": 24}))
    streaming, last = outs[1:-1], outs[-1]
    assert streaming and all(not m["content"].rstrip().endswith("`") for o in streaming
                             for m in o["chat0"] if m["role"] == "assistant")
    assert _answers(last["chat0"])[-1].rstrip().endswith("`")


def test_every_slider_can_reach_its_default():
    """A slider moves from its minimum in steps: a default between two steps cannot be chosen again once
    moved (ACM's t ran from 0.01 in steps of 0.05, so neither its default 0.7 nor 1.0 could be)."""
    for name, spec in C.methods().items():
        for p in spec.params:
            if not C.numeric(p) or p.kind == "int":
                continue
            lo, hi, step = C._range(p)
            for want in {p.default_for(t) for t in (None, "safety", "math", "code")}:
                n = (float(want) - lo) / step
                assert abs(n - round(n)) < 1e-6, f"{name}.{p.name}: {want} is not on the slider ({lo}, step {step})"
    lo, _, step = C._range(C.spec_of("acm").param("temperature"))
    assert abs((1.0 - lo) / step - round((1.0 - lo) / step)) < 1e-6


def test_the_sweep_s_hover_shows_the_knob_s_value_without_trailing_zeros():
    from ui import figures as F
    pts = [{"value": v, "safety": 0.5, "utility": 0.4} for v in (0.0, 0.25)]
    fig = F.sweep(pts, [], "lambda", "t", "utility: math solved")
    assert "lambda = %{customdata:~g}" in fig.data[0].hovertemplate
    assert list(fig.data[0].customdata) == [0.0, 0.25]


def test_a_hidden_knob_is_not_sent_and_an_unknown_choice_is_refused():
    """ACM-TA hides density (only ACM-TIES trims): the recipe must not carry it, nor the history show it;
    a choice the control does not offer is one sentence, never silently the default."""
    r = {"merge_method": "acm", "base_model": "zoo:base", "parameters": {"base_method": "ties"},
         "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"density": 0.5}},
                    {"model": "zoo:math", "task": "math"}]}
    v = controls(r)
    assert C.recipe_from_values(v)["models"][0]["parameters"] == {"density": 0.5}
    k = C.key("acm", "base_method")
    ta = C.recipe_from_values({**v, k: "task_arithmetic"})
    assert all("density" not in m["parameters"] for m in ta["models"])
    assert "density" not in C.describe(ta)
    with pytest.raises(Exception, match=r"must be one of task_arithmetic, ties; got 'nonsense'"):
        C.recipe_from_values({**v, k: "nonsense"})


@pytest.mark.parametrize("ref, task, label", [
    ("zoo:safety", "safety", "safety"), ("smol:math", "math", "smol:math"), ("zoo:math", "code", "math (code)"),
    ("/data/runs/qwen-math/final", "math", "qwen-math/final (math)"),
])
def test_chat_columns_name_the_task_only_when_the_name_does_not(ref, task, label):
    from ui.common import column_label
    assert column_label(ref, task) == label
    assert MD.expert_headers({"expert0": ref, "task0": task})["chat1"]["label"] == label


def test_the_board_never_draws_measurements_of_different_sizes_as_one_picture(session):
    """#1 probed with 4 prompts per suite, #2 with 5: the table says what each row was measured on, and
    the scatter draws only what was measured like the newest probe, saying what it left out."""
    MRG.do_merge(controls(recipe(w=(1.0, 1.0))))
    PR.run_probes({**controls(recipe(w=(1.0, 1.0))), "suites": ["harmful", "math"], "limit": 4})
    MRG.do_merge(controls(recipe(w=(0.5, 0.5))))
    out = PR.run_probes({**controls(recipe(w=(0.5, 0.5))), "suites": ["harmful", "math"], "limit": 5})
    by = {r[0]: r for r in out["board"]}
    assert by["#1"][6] == "4 per suite: harmful, math" and by["#2"][6] == "5 per suite: harmful, math"
    assert by["base"][6] == "5 per suite: harmful, math"           # the references follow the newest size
    fig = out["board_plot"]
    assert sorted(t.name for t in fig.data) == sorted(["#2", "base", "safety", "math"])
    title = fig.layout.title.text
    # #1 and the base and parents' rows at 4 prompts stay in the table, not in the picture
    assert "measured on 5 per suite: harmful, math" in title and "4 entries measured on other prompts not drawn" in title
    assert [r[6].split(" per")[0] for r in out["board"] if r[0] == "base"] == ["4", "5"]


def test_the_board_judges_a_three_expert_merge_on_the_mean_of_its_skills_and_keeps_each_size(session):
    """Safety + math + code merged: utility is the mean of math solved and code passed, on both scatters,
    named on the axis; the base probed at 4 and then at 6 prompts keeps both rows, and each scatter draws
    the base measured as its merge was (the same numbers on both), its size on hover."""
    three = {**controls(recipe(w=(0.5, 0.25))), **experts(("zoo:safety", "safety"), ("zoo:math", "math"),
                                                          ("zoo:code", "code"))}
    three[C.key("task_arithmetic", "weight", 2)] = 0.25
    MRG.do_merge(three)
    small = PR.run_probes({**three, "suites": ["harmful", "math", "code"], "limit": 4})
    out = PR.run_probes({**three, "suites": ["harmful", "math", "code"], "limit": 6})
    for fig in (out["plot_probe"], out["board_plot"]):
        assert fig.layout.xaxis.title.text == "utility: mean of math solved and code tests passed"
    rows = {r[0]: r for r in out["probe_table"]}
    merged = next(r for k, r in rows.items() if k.startswith("merged"))
    want = (float(merged[4].rstrip("%")) + float(merged[5].rstrip("%"))) / 200
    star = next(t for t in out["board_plot"].data if t.name == "#1")
    assert star.x[0] == pytest.approx(want, abs=0.006)            # the table rounds to whole percents
    assert "6 prompts per suite" in star.hovertemplate
    base_rows = [r for r in out["board"] if r[0] == "base"]
    assert [r[6].split(" per suite")[0] for r in base_rows] == ["4", "6"]
    on_probe = {t.name: (t.x[0], t.y[0]) for t in out["plot_probe"].data}
    on_board = {t.name: (t.x[0], t.y[0]) for t in out["board_plot"].data}
    assert on_board["base"] == on_probe["base"] and on_board["code"] == on_probe["code"]
    small_base = {t.name: (t.x[0], t.y[0]) for t in small["plot_probe"].data}["base"]
    assert {t.name: (t.x[0], t.y[0]) for t in small["board_plot"].data}["base"] == small_base


def test_the_tour_compares_on_the_family_s_held_out_suites(session, monkeypatch):
    """Step 5 is a lesson in a minute: the family's own held-out suites even when the Probe tab is set to
    the public benchmarks (which take minutes per model on a CPU)."""
    asked = []
    real = service.probe_suites_for
    monkeypatch.setattr(service, "probe_suites_for",
                        lambda base, kinds, held_out=False: asked.append(held_out) or real(base, kinds, held_out))
    MRG.do_merge(controls(recipe()))
    out = LN.compare_tour({**controls(recipe()), "suites": ["harmful", "math"], "limit": 4,
                           "suite_set": PRB.BENCHMARKS})
    assert asked and all(asked) and "of the family's held-out suites" in out["probe_status"]


def test_an_empty_expert_slot_shows_no_task():
    out = MD.expert_headers({"expert0": "zoo:safety", "task0": "safety", "expert1": "", "task1": "code"})
    assert out["task0"]["visible"] is True and out["task1"]["visible"] is False
    assert out["head1"] == "" and out["chat2"]["visible"] is False
