"""Plotly figures for the Look and Probe tabs.

Each function takes the plain dicts core returns and only draws: titles say
what the picture is in words a newcomer knows, colour scales run from
"nothing" (pale) to "a lot" (dark) except cosines, which are diverging
around 0, and every cell's hover shows its number.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT = dict(family="Inter, system-ui, sans-serif", size=12)
PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
TASK_COLOURS = {"safety": "#dc2626", "math": "#2563eb", "code": "#16a34a", "custom": "#9333ea",
                "merged": "#111827", "base": "#6b7280"}


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
             zmid: float | None = None, fmt: str = ".3f", log: bool = False) -> go.Figure:
    """One layers × module heatmap per panel (expert or pair), one shared colour bar.

    ``panels`` maps a panel title to a matrix (rows × cols, None = no value).
    ``log``: colour by log10 of the value (scores spanning orders of
    magnitude, where a linear scale shows one bright cell and the rest
    black); the hover still shows the value itself.
    """
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
    fig.update_xaxes(tickangle=-45)
    for ann in fig.layout.annotations:
        ann.font = dict(size=12)
    return _layout(fig, title, height=max(260, 90 + 34 * len(rows)))


def lines(x: list[str], series: dict[str, list], title: str, ytitle: str, yrange=None,
          colours: dict[str, str] | None = None, fmt: str = ".3f", hline: float | None = None) -> go.Figure:
    """One line per series over the layers (embed, layer 0.., norm, lm_head)."""
    fig = go.Figure()
    for i, (name, ys) in enumerate(series.items()):
        colour = (colours or {}).get(name, PALETTE[i % len(PALETTE)])
        fig.add_trace(go.Scatter(x=x, y=[_nan(v) for v in ys], name=name, mode="lines+markers",
                                 line=dict(color=colour, width=2), marker=dict(size=7),
                                 hovertemplate=f"<b>{name}</b><br>%{{x}}<br>{ytitle}: %{{y:{fmt}}}<extra></extra>"))
    if hline is not None:
        fig.add_hline(y=hline, line_dash="dot", line_color="#9ca3af")
    fig.update_yaxes(title=ytitle, range=yrange)
    fig.update_layout(legend=dict(orientation="h", y=-0.22))
    return _layout(fig, title, 340)


def stacked_shares(x: list[str], shares: dict[str, list], other: list, title: str,
                   colours: dict[str, str] | None = None) -> go.Figure:
    """100% bars per layer: each expert's share of the merged change, plus 'other'."""
    fig = go.Figure()
    for i, (name, ys) in enumerate(shares.items()):
        colour = (colours or {}).get(name, PALETTE[i % len(PALETTE)])
        fig.add_trace(go.Bar(x=x, y=[_nan(v) for v in ys], name=name, marker_color=colour,
                             hovertemplate=f"<b>{name}</b><br>%{{x}}<br>share of the change: %{{y:.1%}}<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=[_nan(v) for v in other], name="not along any expert", marker_color="#d1d5db",
                         hovertemplate="<b>not along any expert</b><br>%{x}<br>share: %{y:.1%}<extra></extra>"))
    fig.update_layout(barmode="relative", legend=dict(orientation="h", y=-0.22))
    fig.update_yaxes(title="share of the merged change", tickformat=".0%")
    return _layout(fig, title, 340)


def probe_scatter(points: list[dict], title: str = "Safety vs utility", xtitle: str = "utility") -> go.Figure:
    """points: {"name", "safety" (refusal of harmful, 0..1), "utility" (0..1), "kind"}."""
    fig = go.Figure()
    for p in points:
        colour = TASK_COLOURS.get(p.get("kind", ""), "#6b7280")
        fig.add_trace(go.Scatter(
            x=[_nan(p.get("utility"))], y=[_nan(p.get("safety"))], mode="markers+text", text=[p["name"]],
            textposition="top right" if p.get("kind") == "merged" else "top left", name=p["name"],
            marker=dict(size=14, color=colour, symbol="star" if p.get("kind") == "merged" else "circle"),
            hovertemplate=f"<b>{p['name']}</b><br>refuses harmful: %{{y:.0%}}<br>utility: %{{x:.0%}}<extra></extra>"))
    _axes_01(fig, xtitle)
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, 400)


def sweep(points: list[dict], parents: list[dict], param: str, title: str, xtitle: str = "utility") -> go.Figure:
    """The trade-off a sweep draws: one marker per value of ``param``, joined in order."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[_nan(p["utility"]) for p in points], y=[_nan(p["safety"]) for p in points], mode="lines+markers+text",
        text=[f"{p['value']:g}" for p in points], textposition="top right", name=f"merged, {param}",
        line=dict(color="#111827"), marker=dict(size=10, color=[p["value"] for p in points], colorscale="Viridis",
                                                showscale=True, colorbar=dict(title=param, thickness=12)),
        customdata=[p["value"] for p in points],
        hovertemplate=f"{param} = %{{customdata:g}}<br>refuses harmful: %{{y:.0%}}<br>utility: %{{x:.0%}}<extra></extra>"))
    for p in parents:
        fig.add_trace(go.Scatter(x=[_nan(p["utility"])], y=[_nan(p["safety"])], mode="markers+text", text=[p["name"]],
                                 textposition="bottom center", name=p["name"],
                                 marker=dict(size=12, color=TASK_COLOURS.get(p.get("kind", ""), "#6b7280")),
                                 hovertemplate=f"<b>{p['name']}</b><br>refuses harmful: %{{y:.0%}}<br>"
                                               f"utility: %{{x:.0%}}<extra></extra>"))
    _axes_01(fig, xtitle)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, 400)


def _axes_01(fig: go.Figure, xtitle: str) -> None:
    fig.update_xaxes(title=xtitle, range=[-0.05, 1.1], tickformat=".0%")
    fig.update_yaxes(title="safety: harmful requests refused", range=[-0.05, 1.12], tickformat=".0%")
