"""Plotly figures for the Look and Probe tabs.

Each function takes the plain dicts core returns and only draws: titles say
what the picture is in words a newcomer knows, colour scales run from
"nothing" (pale) to "a lot" (dark) except cosines, which are diverging
around 0, and every cell's hover shows its number.

Correct by construction: one colour per expert (by task) in every figure,
and no expert colour in any colour scale (sequential scales are neutral,
cosines have their own purple-orange diverging scale); a value axis always
shows its natural range (0..1 for fractions) and widens only for values
outside it, so rounding noise is never magnified into a zig-zag; shares
are drawn inside 0..100% (see ``stacked_shares``).
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT = dict(family="Inter, system-ui, sans-serif", size=12)
PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
TASK_COLOURS = {"safety": "#dc2626", "math": "#2563eb", "code": "#16a34a", "custom": "#0891b2",
                "merged": "#111827", "base": "#6b7280"}
COSINE_SCALE = "PuOr"          # diverging, no expert's colour in it
SEQUENTIAL = {"importance": "Viridis", "elected": "Cividis", "overlap": "YlOrBr", "norms": "Greys"}
SHORT_MODULES = {"attn_norm": "attn-norm", "mlp_norm": "mlp-norm"}
NOISE = 1e-6                   # differences below this are rounding, not signal


def _nan(v):
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _grid(z):
    return [[_nan(v) for v in row] for row in z]


def _layout(fig: go.Figure, title: str, height: int = 340) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)), height=height,
                      margin=dict(l=60, r=20, t=60, b=50), font=FONT, template="plotly_white")
    return fig


def empty(message: str, height: int = 200) -> go.Figure:
    """A placeholder that says why there is no picture yet."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", height)


def heatmaps(panels: dict[str, list[list]], rows: list[str], cols: list[str], title: str, value_name: str,
             colorscale: str = "Blues", zmin: float | None = None, zmax: float | None = None,
             zmid: float | None = None, fmt: str = ".3f", log: bool = False,
             panel_colours: dict[str, str] | None = None) -> go.Figure:
    """One layers × module heatmap per panel (expert or pair), one shared colour bar.

    ``panels`` maps a panel title to a matrix (rows × cols, None = no value).
    ``log``: colour by log10 of the value (scores spanning orders of
    magnitude, where a linear scale shows one bright cell and the rest
    black); the hover still shows the value itself. ``panel_colours``
    colours each panel's title (the expert's colour). Module labels are
    shortened and turned upright when panels are narrow, so three experts'
    panels stay readable.
    """
    cols = [SHORT_MODULES.get(c, c) for c in cols]
    names = list(panels)
    if not names:
        return empty("Nothing to show.")
    raw = {k: _grid(z) for k, z in panels.items()}
    if log:
        panels = {k: [[math.log10(v) if v == v and v > 0 else None for v in row] for row in z] for k, z in raw.items()}
    vals = [v for z in panels.values() for row in z for v in row if v is not None and not math.isnan(v)]
    if zmin is None:
        zmin = min(vals) if vals else 0.0
    if zmax is None:
        zmax = max(vals) if vals else 1.0
    if zmax <= zmin:
        zmax = zmin + 1e-9
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=0.04 if len(names) > 1 else 0.0)
    for j, name in enumerate(names):
        bar = dict(title=dict(text=value_name + (" (log scale)" if log else ""), side="right"), thickness=12)
        if log:
            ticks = list(range(math.floor(zmin), math.ceil(zmax) + 1))
            bar.update(tickvals=ticks, ticktext=[f"1e{t}" for t in ticks])
        fig.add_trace(go.Heatmap(
            z=_grid(panels[name]), x=cols, y=rows, colorscale=colorscale, zmin=zmin, zmax=zmax, zmid=zmid,
            customdata=raw[name], showscale=(j == len(names) - 1), colorbar=bar,
            hovertemplate=f"<b>{name}</b><br>%{{y}} · %{{x}}<br>{value_name}: %{{customdata:{fmt}}}<extra></extra>",
            xgap=1, ygap=1), row=1, col=j + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-90 if len(names) >= 3 else -45, tickfont=dict(size=10 if len(names) >= 3 else 11))
    for ann in fig.layout.annotations:
        ann.font = dict(size=12, color=(panel_colours or {}).get(ann.text, "#111827"))
    fig = _layout(fig, title, height=max(300, 130 + 34 * len(rows)))
    fig.update_layout(margin=dict(b=90))
    return fig


def denoise(v):
    """A value with rounding noise removed (1.0000001 -> 1.0), so a flat line is drawn flat."""
    v = _nan(v)
    return v if v != v else round(v / NOISE) * NOISE + 0.0


def natural_range(values, lo: float = 0.0, hi: float = 1.0, pad: float = 0.05) -> list[float]:
    """An axis range that always shows [lo, hi] and widens only for values outside it."""
    vals = [v for v in (_nan(x) for x in values) if v == v]
    a, b = min([lo] + vals), max([hi] + vals)
    span = b - a
    return [a - pad * span, b + pad * span]


def lines(x: list[str], series: dict[str, list], title: str, ytitle: str, yrange=None,
          colours: dict[str, str] | None = None, fmt: str = ".3f", hline: float | None = None,
          dashed: dict[str, list] | None = None) -> go.Figure:
    """One line per series over the layers (embed, layer 0.., norm, lm_head); ``dashed``
    adds dotted companions (same colour as the series whose name they start with).
    Without ``yrange`` the axis shows 0..1 at least (``natural_range``)."""
    fig = go.Figure()
    allv = []
    for i, (name, ys) in enumerate(list(series.items()) + list((dashed or {}).items())):
        is_dash = name not in series
        base = next((n for n in series if name.startswith(n)), name)
        colour = (colours or {}).get(base, PALETTE[i % len(PALETTE)])
        y = [denoise(v) for v in ys]
        allv += y
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines+markers",
                                 line=dict(color=colour, width=2, dash="dot" if is_dash else "solid"),
                                 marker=dict(size=5 if is_dash else 7),
                                 hovertemplate=f"<b>{name}</b><br>%{{x}}<br>{ytitle}: %{{y:{fmt}}}<extra></extra>"))
    if hline is not None:
        fig.add_hline(y=hline, line_dash="dot", line_color="#9ca3af")
    fig.update_yaxes(title=ytitle, range=yrange or natural_range(allv))
    fig.update_layout(legend=dict(orientation="h", y=-0.22))
    return _layout(fig, title, 340)


def drawn_shares(shares: dict[str, list], other: list) -> tuple[dict[str, list], list]:
    """Shares as drawn: each inside [0, 1] and each bar adding up to exactly 1.

    The least-squares split (core/eval/weights.py) adds up to 1 but is not
    unique when task vectors point partly the same way: one expert's part
    can come out above 100% and another's below 0. Drawn, a negative part
    is shown as 0 and the parts are scaled so the bar is 100%; the hover
    keeps the exact numbers and the caption says so."""
    names = list(shares)
    out = {n: [] for n in names}
    rest = []
    for j in range(len(other)):
        vals = [max(0.0, _nan(shares[n][j])) if _nan(shares[n][j]) == _nan(shares[n][j]) else float("nan")
                for n in names]
        o = _nan(other[j])
        if any(v != v for v in vals) or o != o:
            for n in names:
                out[n].append(float("nan"))
            rest.append(float("nan"))
            continue
        o = max(0.0, o)
        total = sum(vals) + o
        scale = 1.0 / total if total > 0 else 0.0
        for n, v in zip(names, vals):
            out[n].append(v * scale)
        rest.append(o * scale)
    return out, rest


def stacked_shares(x: list[str], shares: dict[str, list], other: list, title: str,
                   colours: dict[str, str] | None = None) -> go.Figure:
    """100% bars per layer: each expert's share of the merged change, plus 'other' (see drawn_shares)."""
    fig = go.Figure()
    drawn, rest = drawn_shares(shares, other)
    for i, (name, ys) in enumerate(drawn.items()):
        colour = (colours or {}).get(name, PALETTE[i % len(PALETTE)])
        fig.add_trace(go.Bar(x=x, y=ys, name=name, marker_color=colour, customdata=[_nan(v) for v in shares[name]],
                             hovertemplate=f"<b>{name}</b><br>%{{x}}<br>drawn: %{{y:.1%}} (exact split: "
                                           f"%{{customdata:.1%}})<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=rest, name="not along any expert", marker_color="#d1d5db",
                         customdata=[_nan(v) for v in other],
                         hovertemplate="<b>not along any expert</b><br>%{x}<br>drawn: %{y:.1%} (exact split: "
                                       "%{customdata:.1%})<extra></extra>"))
    fig.update_layout(barmode="stack", legend=dict(orientation="h", y=-0.22))
    fig.update_yaxes(title="share of the merged change", tickformat=".0%", range=[0, 1])
    return _layout(fig, title, 340)


def probe_scatter(points: list[dict], title: str = "Safety vs utility", xtitle: str = "utility") -> go.Figure:
    """points: {"name", "safety" (refusal of harmful, 0..1), "utility" (0..1), "kind", "n" (prompts per suite,
    shown on hover)}."""
    fig = go.Figure()
    labels = _spot_labels([(_nan(p.get("utility")), _nan(p.get("safety"))) for p in points], [p["name"] for p in points])
    for p, label in zip(points, labels):
        colour = TASK_COLOURS.get(p.get("kind", ""), "#6b7280")
        fig.add_trace(go.Scatter(
            x=[_nan(p.get("utility"))], y=[_nan(p.get("safety"))], mode="markers+text", text=[label],
            textposition="top right" if p.get("kind") == "merged" else "top left", name=p["name"], cliponaxis=False,
            marker=dict(size=14, color=colour, symbol="star" if p.get("kind") == "merged" else "circle"),
            hovertemplate=f"<b>{p['name']}</b><br>refuses harmful: %{{y:.0%}}<br>utility: %{{x:.0%}}"
                          + (f"<br>{p['n']} prompts per suite" if p.get("n") else "") + "<extra></extra>"))
    _axes_01(fig, xtitle)
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, 400).update_layout(margin=dict(l=70, r=50, t=60, b=50))


def _spot_labels(spots: list[tuple], names: list[str]) -> list[str]:
    """Points on the same spot share one label ("#1, #2") on the first of them, instead of overprinting."""
    together: dict = {}
    for spot, name in zip(spots, names):
        together.setdefault(spot, []).append(name)
    seen: set = set()
    out = []
    for spot in spots:
        out.append("" if spot in seen else ", ".join(together[spot]))
        seen.add(spot)
    return out


def sweep(points: list[dict], parents: list[dict], param: str, title: str, xtitle: str = "utility") -> go.Figure:
    """The trade-off a sweep draws: one marker per value of ``param``, joined in order."""
    fig = go.Figure()
    labels = _spot_labels([(_nan(p["utility"]), _nan(p["safety"])) for p in points],
                          [f"{p['value']:g}" for p in points])
    fig.add_trace(go.Scatter(
        x=[_nan(p["utility"]) for p in points], y=[_nan(p["safety"]) for p in points], mode="lines+markers+text",
        text=labels, textposition="top right", name=f"merged, {param}", cliponaxis=False,
        line=dict(color="#111827"), marker=dict(size=10, color=[p["value"] for p in points], colorscale="Viridis",
                                                showscale=True, colorbar=dict(title=param, thickness=12)),
        customdata=[p["value"] for p in points],
        # "~g": d3's g without trailing zeros (plain g showed "lambda = 0.00000")
        hovertemplate=f"{param} = %{{customdata:~g}}<br>refuses harmful: %{{y:.0%}}<br>utility: %{{x:.0%}}<extra></extra>"))
    for p in parents:
        fig.add_trace(go.Scatter(x=[_nan(p["utility"])], y=[_nan(p["safety"])], mode="markers+text", text=[p["name"]],
                                 textposition="bottom center", name=p["name"], cliponaxis=False,
                                 marker=dict(size=12, color=TASK_COLOURS.get(p.get("kind", ""), "#6b7280")),
                                 hovertemplate=f"<b>{p['name']}</b><br>refuses harmful: %{{y:.0%}}<br>"
                                               f"utility: %{{x:.0%}}<extra></extra>"))
    _axes_01(fig, xtitle)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, 400).update_layout(margin=dict(l=70, r=50, t=60, b=50))


def _axes_01(fig: go.Figure, xtitle: str) -> None:
    fig.update_xaxes(title=xtitle, range=[-0.08, 1.12], tickformat=".0%")
    fig.update_yaxes(title="safety: harmful requests refused", range=[-0.08, 1.14], tickformat=".0%")
