"""The pictures say what their captions and axes say: the numbers drawn, not just that a figure exists.

Merges on the built-in family (three experts where it matters); the drawn
values are read back from the Plotly figures the Look and Probe tabs show.
"""
import math

import pytest

from ui import controls as C
from ui import figures as F
from ui import state as S
from ui import pictures as PIC
from ui import merging as MRG

THREE = [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"},
         {"model": "zoo:code", "task": "code"}]


@pytest.fixture()
def session():
    S.drop(None)
    yield S.get(None)
    S.drop(None)


def look_after(recipe: dict) -> dict:
    v = C.values_from_recipe(recipe)
    MRG.do_merge(v)
    return PIC.look_refresh(v)


def _finite(values):
    return [v for v in values if v is not None and v == v]


def test_drawn_shares_stay_inside_0_to_100_percent_and_add_up():
    exact = {"safety": [1.3, 0.5, None], "math": [-0.2, 0.25, None]}
    drawn, rest = F.drawn_shares(exact, [-0.1, 0.25, None])
    assert drawn["safety"][:2] == [1.0, 0.5] and drawn["math"][:2] == [0.0, 0.25] and rest[:2] == [0.0, 0.25]
    assert all(math.isnan(x) for x in (drawn["safety"][2], drawn["math"][2], rest[2]))


def test_a_three_expert_led_merge_draws_shares_and_fractions_inside_their_axes(session):
    out = look_after({"merge_method": "led", "base_model": "zoo:base", "models": THREE,
                      "parameters": {"location": "magnitude"}})
    share = out["prov_share"]
    bars = [list(t.y) for t in share.data]
    assert len(bars) == 4 and tuple(share.layout.yaxis.range) == (0, 1)
    for j in range(len(bars[0])):
        col = _finite(b[j] for b in bars)
        if col:
            assert all(0.0 <= x <= 1.0 for x in col) and sum(col) == pytest.approx(1.0)
    coef = out["prov_coef"]
    lo, hi = coef.layout.yaxis.range
    ys = _finite(y for t in coef.data for y in t.y)
    assert lo <= min(ys + [0.0]) and hi >= max(ys + [1.0])       # every value inside the axis, 0..1 shown
    # readable with three experts: upright short module labels, each panel titled in its expert's colour
    imp = out["importance"]
    assert imp.layout.xaxis.tickangle == -90 and "attn-norm" in list(imp.data[0].x)
    titles = {a.text.split(" ")[0]: a.font.color for a in imp.layout.annotations}
    assert titles == {"safety": F.TASK_COLOURS["safety"], "math": F.TASK_COLOURS["math"],
                      "code": F.TASK_COLOURS["code"]}


def test_task_arithmetic_draws_a_flat_line_not_rounding_noise(session):
    out = look_after({"merge_method": "task_arithmetic", "base_model": "zoo:base",
                      "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"weight": 1.0}},
                                 {"model": "zoo:math", "task": "math", "parameters": {"weight": 1.0}}],
                      "parameters": {"lambda": 1.0}})
    coef = out["prov_coef"]
    for t in coef.data:
        assert set(t.y) == {1.0}                     # λ·weight = 1 at every layer, exactly as drawn
    lo, hi = coef.layout.yaxis.range
    assert lo < 0.0 and hi > 1.0 and hi - lo > 1.0   # the axis shows 0..1, not 0.9999999..1.0000001


@pytest.mark.slow
def test_acm_shows_lambda_over_n_which_is_what_the_merge_keeps(session):
    out = look_after({"merge_method": "acm", "base_model": "zoo:base", "models": THREE[:2],
                      "parameters": {"n_calibration": 8, "clusters": 2}})
    acm, coef = out["acm"], out["prov_coef"]
    lam = {t.name: list(t.y) for t in acm.data}
    n = 2
    for e in ("safety", "math"):
        assert all(0.5 <= y < 1.0 for y in lam[e])
        assert lam[f"{e} · λ/N (added)"] == pytest.approx([y / n for y in lam[e]], abs=2e-6)
        kept = {t.name: list(t.y) for t in coef.data}[e]
        assert kept == pytest.approx([y / n for y in lam[e]], abs=1e-3)     # the 1/N relation, drawn
    assert acm.layout.yaxis.range == (0.0, 1.02)


def test_one_colour_per_expert_and_cosines_on_their_own_scale():
    import plotly.colors as pc
    norms, cos = PIC.tv_figures({"experts": ["zoo:safety", "zoo:math", "zoo:code"], "layers": ["layer 0"],
                                "modules": ["q", "attn_norm"], "rel_norms": {e: [[0.1, 0.2]] for e in
                                                                               ["zoo:safety", "zoo:math", "zoo:code"]},
                                "cosines": {"zoo:safety vs zoo:math": [[0.05, -0.3]]}},
                               {"zoo:safety": "safety", "zoo:math": "math", "zoo:code": "code"})
    # the task-vector panels are titled in their expert's colour, as in every other figure
    assert {a.text: a.font.color for a in norms.layout.annotations if a.text in ("safety", "math", "code")} == \
        {t: F.TASK_COLOURS[t] for t in ("safety", "math", "code")}
    scale = [c for _, c in cos.data[0].colorscale]
    experts = {pc.hex_to_rgb(F.TASK_COLOURS[t]) for t in ("safety", "math", "code", "custom")}
    assert not experts & {pc.unlabel_rgb(c) if c.startswith("rgb") else pc.hex_to_rgb(c) for c in scale}
    assert (cos.data[0].zmin, cos.data[0].zmax) == (-1.0, 1.0)
    line = PIC.acm_figure({"experts": ["zoo:safety", "zoo:math"], "layers": ["embed"], "temperature": 0.7,
                          "coef": {"zoo:safety": [0.7], "zoo:math": [0.6]}},
                         {"zoo:safety": "safety", "zoo:math": "math"})
    colour = {t.name: t.line.color for t in line.data}
    assert colour["safety"] == colour["safety · λ/N (added)"] == F.TASK_COLOURS["safety"]
    scatter = F.probe_scatter([{"name": "safety", "kind": "safety", "safety": 1.0, "utility": 0.2}])
    assert scatter.data[0].marker.color == F.TASK_COLOURS["safety"]


def test_a_sweep_labels_coincident_points_once():
    pts = [{"value": v, "safety": s, "utility": u} for v, s, u in [(0.0, 0.5, 0.5), (0.5, 0.5, 0.5), (1.0, 0.2, 0.9)]]
    fig = F.sweep(pts, [{"name": "safety", "kind": "safety", "safety": 1.0, "utility": 0.0}], "lambda", "t")
    assert list(fig.data[0].text) == ["0, 0.5", "", "1"]
    assert fig.data[1].cliponaxis is False and fig.layout.xaxis.range[0] < 0.0
