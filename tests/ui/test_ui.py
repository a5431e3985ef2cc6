"""The app's event handlers, called directly (no server, no browser).

They run on the built-in family: a merge is well under a second, a chat
answer or a 4-prompt probe a second or two.
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
from ui import app as A
from ui.tabs import chat as CH, export as EX, learn as LN, look as LK, merge as MG, models as MD, probe as PR
from ui import controls as C
from ui import learn as L
from ui import state as S


def values(updates) -> list:
    """What the browser would send back after these updates."""
    return [u.get("value") if isinstance(u, dict) else u for u in updates]


def recipe(method="task_arithmetic", w=(0.5, 0.25), lam=1.0, **extra) -> dict:
    return {"merge_method": method, "base_model": "zoo:base",
            "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"weight": w[0]}},
                       {"model": "zoo:math", "task": "math", "parameters": {"weight": w[1]}}],
            "parameters": {"lambda": lam, **extra}, "dtype": "float32"}


def weights(ref: str) -> dict:
    return load_file(os.path.join(M.resolve(ref), "model.safetensors"))


@pytest.fixture()
def session():
    S.drop(None)
    yield S.get(None)
    S.drop(None)


@pytest.fixture()
def merged(session):
    v = values(C.values_from_recipe(recipe()))
    MG.do_merge(*v)
    return v


# ------------------------------------------------------------- controls
def _sample_recipe(name, spec):
    n = 1 if spec.max_models == 1 else 2
    models = [{"model": m, "task": t} for m, t in [("zoo:safety", "safety"), ("zoo:math", "math")][:n]]
    return {"merge_method": name, "base_model": "zoo:base", "models": models}


def test_every_method_round_trips_through_the_controls():
    for name, spec in service.list_methods().items():
        v = values(C.values_from_recipe(_sample_recipe(name, spec)))
        lay = C.layout(spec)
        # move every visible per-expert slider to a value of its own inside its range
        _, _, experts, *_ = C.split(v)
        for i, _ref, _task in C.used_experts(experts):
            for k, p in enumerate(lay.pm_num):
                lo, hi, _ = C._range(p)
                x = lo + (hi - lo) * (0.2 + 0.1 * k + 0.05 * i)
                v[1 + C.N_MODEL_VALUES + i * C.PM_SLOTS + k] = round(x) if p.kind == "int" else x
        r1 = C.recipe_from_values(v)
        r2 = C.recipe_from_values(values(C.values_from_recipe(r1)))
        assert r1 == r2, name
        assert r1["merge_method"] == name and len(r1["models"]) == len(_sample_recipe(name, spec)["models"])


def test_method_change_starts_led_at_the_papers_ratios():
    out = MG.method_changed("led", "zoo:safety", "safety", "zoo:math", "math", "", "code")
    assert "LED-Merging" in out[0]
    lay = C.layout(C.spec_of("led"))
    k = [p.name for p in lay.pm_num].index("mask_ratio")
    assert out[1 + k]["value"] == pytest.approx(0.1)
    assert out[1 + C.PM_SLOTS + k]["value"] == pytest.approx(0.4)
    # a seed's 0..2^63 range is no slider; it keeps its default
    assert all(p.name != "seed" for p in lay.pm_num + lay.g_num)


def test_a_tasks_default_r_lives_in_the_registry_alone(monkeypatch):
    """Change LED's per-task r in its Param and every place that shows or uses it follows."""
    import dataclasses
    from core import service
    spec = C.spec_of("led")
    i = [p.name for p in spec.params].index("mask_ratio")
    changed = dataclasses.replace(spec.params[i], by_task=(("safety", 0.15), ("math", 0.35)))
    monkeypatch.setattr(spec, "params", spec.params[:i] + [changed] + spec.params[i + 1:])
    k = [p.name for p in C.layout(spec).pm_num].index("mask_ratio")
    out = MG.method_changed("led", "zoo:safety", "safety", "zoo:math", "math", "", "code")
    assert (out[1 + k]["value"], out[1 + C.PM_SLOTS + k]["value"]) == (0.15, 0.35)       # the sliders
    tour = C.recipe_from_values(values(LN.learn_recipe("led")[:-1]))
    assert [m["parameters"]["mask_ratio"] for m in tour["models"]] == [0.15, 0.35]       # the Learn tour
    plan = service.plan({"merge_method": "led", "base_model": "zoo:base",
                         "models": [{"model": "zoo:safety"}, {"model": "zoo:math"}, {"model": "zoo:code"}]})
    assert [mp["mask_ratio"] for mp in plan.model_params] == [0.15, 0.35, 0.4]           # the merge (code: r's default)


def test_compatibility_report_before_loading(tmp_path):
    text, rows = MD.check_models("zoo:base", "zoo:safety", "safety", "zoo:math", "math", "", "code")
    assert "Compatible" in text and [r[1] for r in rows] == ["zoo:base", "zoo:safety", "zoo:math"]
    text, rows = MD.check_models("zoo:base", str(tmp_path / "nowhere"), "math", "", "math", "", "code")
    assert text.startswith("✗") and "does not exist" in text and rows == []
    # a model with a different depth: same files, config says 3 layers
    fake = tmp_path / "shallow"
    fake.mkdir()
    cfg = json.load(open(os.path.join(M.resolve("zoo:math"), "config.json")))
    cfg["num_hidden_layers"] = 3
    (fake / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(M.resolve("zoo:math"), "model.safetensors"), fake / "model.safetensors")
    text, _ = MD.check_models("zoo:base", str(fake), "math", "", "math", "", "code")
    assert text.startswith("✗") and "3 layers" in text


# ------------------------------------------------------------- merge
def test_merge_writes_the_task_arithmetic_weights_into_the_live_model(session):
    v = values(C.values_from_recipe(recipe(w=(0.5, 0.25), lam=0.8)))
    status, rows, pick, label = MG.do_merge(*v)
    assert "Task Arithmetic" in status and len(rows) == 1 and pick["value"].startswith("#1")
    b, s, m = weights("zoo:base"), weights("zoo:safety"), weights("zoo:math")
    live = session.model.state_dict()
    for name in ("model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"):
        want = b[name] + 0.8 * (0.5 * (s[name] - b[name]) + 0.25 * (m[name] - b[name]))
        torch.testing.assert_close(live[name], want, rtol=1e-5, atol=1e-6)


def test_knob_release_re_merges_only_after_a_first_merge(session):
    v = values(C.values_from_recipe(recipe()))
    assert MG.auto_merge(True, *v) == [gr.skip()] * 4 and session.model is None
    MG.do_merge(*v)
    v2 = values(C.values_from_recipe(recipe(w=(0.1, 0.9))))
    assert MG.auto_merge(False, *v2) == [gr.skip()] * 4 and len(session.history) == 1
    status, rows, _, _ = MG.auto_merge(True, *v2)
    assert len(rows) == 2 and "weight=0.1" in rows[0][2]
    assert session.merged_recipe == C.recipe_from_values(v2)


def test_history_restores_an_earlier_merge(session):
    first = recipe(w=(1.0, 0.5))
    MG.do_merge(*values(C.values_from_recipe(first)))
    _, rows, pick, _ = MG.do_merge(*values(C.values_from_recipe(recipe(method="ties", w=(1.0, 1.0)))))
    assert [r[0] for r in rows] == [2, 1]
    entry = next(c for c in pick["choices"] if c.startswith("#1"))
    restored = C.recipe_from_values(values(MG.restore_history(entry)))
    assert restored == C.recipe_from_values(values(C.values_from_recipe(first)))
    with pytest.raises(gr.Error, match="Pick an entry"):
        MG.restore_history(None)


def test_look_shows_provenance_equal_to_the_weights(merged):
    out = LK.look_refresh(*merged)
    figs = dict(zip(LK.LOOK_OUTPUTS, out))
    coef = {t.name: list(t.y) for t in figs["prov_coef"].data}
    assert coef["safety"] == pytest.approx([0.5] * 7, abs=1e-4)
    assert coef["math"] == pytest.approx([0.25] * 7, abs=1e-4)
    assert figs["tv_cos"].data[0].type == "heatmap" and len(figs["tv_norms"].data) == 2
    assert out[-1].startswith("Pictures updated")


def test_errors_are_one_sentence(session, monkeypatch, caplog):
    v = values(C.values_from_recipe(recipe()))
    empty = list(v)
    for i in range(C.N_EXPERTS):
        empty[2 + 2 * i] = ""
    with pytest.raises(gr.Error, match="Pick at least one expert"):
        MG.do_merge(*empty)
    assert EX.recipe_yaml(*empty) == "# Pick at least one expert on the Models tab.\n"   # live box: no toast
    with pytest.raises(gr.Error, match="Merge first"):
        list(CH.chat_send("hi", 8, False, *v))

    def boom(*a, **k):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(service, "merge", boom)
    with caplog.at_level(logging.ERROR, logger="merge_explorer.ui"):
        with pytest.raises(gr.Error) as err:
            MG.do_merge(*v)
    assert err.value.message == "Internal error (RuntimeError); details are in the log."
    assert "secret internals" in caplog.text     # the log has the details, the user does not


def test_an_led_merge_from_the_ui_validates_once_and_reads_each_header_once(session, plan_counts):
    led = {"merge_method": "led", "base_model": "zoo:base", "parameters": {"location": "magnitude"},
           "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
    v = values(C.values_from_recipe(led))
    plan_counts["validate"] = 0          # restoring controls from a recipe checks it; the merge starts here
    MG.do_merge(*v)       # loads the base too: from the plan's headers, not read again
    plan_counts.assert_once(["zoo:base", "zoo:safety", "zoo:math"])


def test_the_look_tab_draws_an_led_merge_from_the_merge_result(session, monkeypatch):
    """After a merge the Look tab draws LED's heatmaps from what the merge brought; it prepares nothing."""
    led = {"merge_method": "led", "base_model": "zoo:base", "parameters": {"location": "magnitude"},
           "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
    v = values(C.values_from_recipe(led))
    MG.do_merge(*v)

    def no_second_prepare(*a, **k):
        raise AssertionError("the Look tab prepared the merge again")
    monkeypatch.setattr(service, "led_analysis", no_second_prepare)
    monkeypatch.setattr(C.spec_of("led"), "prepare", no_second_prepare)
    out = LK.look_refresh(*v)
    imp = out[LK.LOOK_OUTPUTS.index("importance")]
    assert len(imp.data) == 2 and out[-1].startswith("Pictures updated")


# ------------------------------------------------------------- chat
def test_chat_streams_merged_and_each_parent(merged):
    prompt = "What is 47 + 8?"
    outs = list(CH.chat_send(prompt, 24, False, *merged))
    assert len(outs) >= 3
    first, last = outs[0], outs[-1]
    assert first[-1] == ""                                   # the prompt box is cleared
    assert [len(c) for c in first[:CH.CHAT_COLUMNS]] == [2, 2, 2, 0]
    for col in last[:3]:
        assert col[0] == {"role": "user", "content": prompt}
        assert col[1]["role"] == "assistant" and col[1]["content"]
    assert last[3] == []
    # single turn: the next answer is the same as asking it alone; the columns keep both exchanges
    again = list(CH.chat_send(prompt, 24, False, *merged))[-1]
    assert len(again[0]) == 4 and again[0][3]["content"] == last[0][1]["content"]
    # a new merge is marked in the merged column
    MG.do_merge(*values(C.values_from_recipe(recipe(w=(1.0, 1.0)))))
    third = list(CH.chat_send(prompt, 8, True, *merged))[-1]
    assert "re-merged" in third[0][4]["content"] and len(third[1]) == 6
    assert CH.chat_clear() == [[]] * CH.CHAT_COLUMNS


# ------------------------------------------------------------- probes
def test_probes_table_scatter_and_parent_cache(merged, monkeypatch):
    rows, fig, status = PR.run_probes(["harmful", "math"], 4, *merged)
    assert [r[0] for r in rows] == ["merged (Task Arithmetic)", "safety", "math"]
    assert all(r[2].endswith("%") and r[4].endswith("%") and r[3] == "—" for r in rows)
    assert len(fig.data) == 3 and "4 prompts" in status
    # utility is judged on the experts' own tasks: math here, not code
    assert fig.layout.xaxis.title.text == "utility: math solved"
    math_acc = {r[0]: r[4] for r in rows}
    assert [f"{t.x[0]:.0%}" for t in fig.data] == [math_acc[n] for n in math_acc]
    calls = []
    real = service.probe
    monkeypatch.setattr(service, "probe", lambda *a, **k: calls.append(a) or real(*a, **k))
    PR.run_probes(["harmful", "math"], 4, *merged)
    assert len(calls) == 1          # the parents' numbers are reused; only the merge is probed again


@pytest.mark.slow
def test_sweep_draws_one_point_per_value_and_restores_the_merge(merged, session):
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    fig, rows, status = PR.run_sweep("g:lambda", 0.0, 1.0, 3, ["harmful"], 4, *merged)
    assert [r[0] for r in rows] == ["0", "0.5", "1"]
    assert list(fig.data[0].customdata) == [0.0, 0.5, 1.0] and len(fig.data) == 3   # curve + 2 parents
    after = session.model.state_dict()
    for k in before:
        torch.testing.assert_close(after[k], before[k])
    with pytest.raises(gr.Error, match="between 0 and 2"):
        PR.run_sweep("g:lambda", 0.0, 5.0, 3, ["harmful"], 4, *merged)


def test_sweep_knobs_follow_the_method():
    v = values(C.values_from_recipe(recipe()))
    up = PR.sweep_options(*v)
    keys = [k for _, k in up["choices"]]
    assert keys == ["pm:0:weight", "pm:1:weight", "g:lambda"] and up["value"] == "pm:0:weight"
    assert PR.sweep_bounds("g:lambda", *v) == (0.0, 2.0)


# ------------------------------------------------------------- export
def test_export_zip_holds_a_model_folder_and_the_yaml_restores_the_controls(session):
    v = values(C.values_from_recipe(recipe(w=(0.75, 0.25))))
    archive, ypath, text, status = EX.export_model(*v)
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    with zipfile.ZipFile(archive) as z:
        tensors = load(z.read("model.safetensors"))
    b, s, m = weights("zoo:base"), weights("zoo:safety"), weights("zoo:math")
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(tensors[name], b[name] + 0.75 * (s[name] - b[name]) + 0.25 * (m[name] - b[name]),
                               rtol=1e-5, atol=1e-6)
    assert open(ypath).read() == text and "task_arithmetic" in text
    out = EX.load_recipe_text(text)
    assert C.recipe_from_values(values(out[:-1])) == C.recipe_from_values(v)
    assert out[-1].startswith("✓ Loaded")


def test_bad_recipe_yaml_is_a_sentence():
    with pytest.raises(gr.Error, match="not valid YAML"):
        EX.load_recipe_text("merge_method: [ties")
    with pytest.raises(gr.Error, match="Unknown merge method"):
        EX.load_recipe_text("merge_method: nope\nbase_model: zoo:base\nmodels: [zoo:math]\n")
    with pytest.raises(gr.Error, match="Paste or upload"):
        EX.load_recipe_text("  ")


# ------------------------------------------------------------- learn + layout
def test_walkthrough_steps_set_their_recipes():
    out = LN.learn_recipe("ta")
    assert C.recipe_from_values(values(out[:-1])) == C.recipe_from_values(values(C.values_from_recipe(L.TA_RECIPE)))
    assert len(L.STEPS) == 5 and all(len(text.split(". ")) >= 2 for _, _, text in L.STEPS)
    r = C.recipe_from_values(values(LN.learn_recipe("led")[:-1]))
    assert r["merge_method"] == "led"
    assert [m["parameters"]["mask_ratio"] for m in r["models"]] == [0.1, 0.4]


def test_build_demo_has_every_tab_and_the_public_api():
    demo = A.build_demo()
    cfg = demo.get_config_file()
    tabs = [c["props"].get("label") for c in cfg["components"] if c.get("type") == "tabitem"]
    assert tabs == ["Models", "Merge", "Look", "Chat", "Probe", "Export", "Learn"]
    apis = {d.get("api_name") for d in cfg["dependencies"]}
    assert {"merge", "chat", "probe"} <= apis


def test_clamping_slider_never_raises_on_a_stale_value():
    k = MG.Knob(0.0, 1.0, value=0.5)
    assert k.preprocess(5.0) == 1.0 and k.preprocess(-1.0) == 0.0 and k.preprocess(0.25) == 0.25
    assert k.get_block_name() == "slider"


@pytest.mark.slow
def test_led_importance_and_overlap_pictures(session):
    v = values(C.values_from_recipe(recipe()))        # not LED: the pictures use LED's defaults
    imp, el, ov, status = LK.led_pictures(*v)
    assert [a.text for a in ov.layout.annotations][0].startswith("safety ∩ math")
    assert len(imp.data) == 2 and len(el.data) == 2 and status.startswith("Importance and overlap")
    z = [x for row in ov.data[0].customdata for x in row if x == x]
    assert z and all(0.0 <= x <= 1.0 for x in z)


@pytest.mark.slow
def test_acm_coefficients_picture(session):
    v = values(C.values_from_recipe(recipe()))        # not ACM: the picture uses ACM's defaults
    fig, status = LK.acm_pictures(*v)
    assert [t.name for t in fig.data] == ["safety", "math"] and status.startswith("ACM coefficients")
    for t in fig.data:
        assert list(t.x)[0] == "embed" and list(t.x)[-1] == "lm_head"
        assert all(0.5 <= y < 1.0 for y in t.y)          # λ = 1 − 1/(1 + e^(−t·(I − max I))) ∈ [0.5, 1)
