"""Per-layer numbers the UI draws: task-vector norms and cosines, and where
the merged weights came from.

Both read the weights one tensor at a time (checkpoint.reader), so
they work on any model size the engine can merge, and return plain
JSON-able values (lists of floats, None where a value does not exist) so
the UI only plots.

Layers × module grids use decoder layers as rows and the module kinds of
``models.MODULE_KINDS`` that occur as columns; the per-point lists use
ACM's points (embed, layer 0..L-1, norm, lm_head) so every per-layer figure
shares one x axis.

"Where the merged weights came from". For each group of tensors (a point
or a layer × module cell) with merged change Δ = θ − θ₀ and task vectors
τᵢ, the least-squares fit Δ ≈ Σ cᵢ τᵢ gives

* ``coef`` cᵢ -- how much of expert i's task vector the merge carries
  there (Task Arithmetic with weights wᵢ and scale λ gives cᵢ = λ·wᵢ
  everywhere; LED-Merging's masks or TIES's trimming give less);
* ``share`` cᵢ·⟨Δ, τᵢ⟩ / ‖Δ‖² -- expert i's part of the merged change;
* ``other`` ‖Δ − Σ cᵢ τᵢ‖² / ‖Δ‖² -- the part no mix of whole task
  vectors explains (masks, sign election, subspace methods).

Because the residual is orthogonal to every τᵢ, the shares and ``other``
add up to exactly 1, so they stack into a 100% bar per layer.
"""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import checkpoint as M
from ..errors import UserError, quoted

Progress = Callable[[float, str], None]

_CACHE: dict[tuple, dict] = {}
_CACHE_MAX = 8
_LOCK = threading.Lock()


def point_of(name: str) -> str:
    """The tensor's point (checkpoint.naming), 'other' if none."""
    return M.point_of(name) or "other"


def _infos(base: str | M.ModelInfo, experts: list) -> tuple[M.ModelInfo, list[M.ModelInfo]]:
    b = base if isinstance(base, M.ModelInfo) else M.inspect(base)
    es = [e if isinstance(e, M.ModelInfo) else M.inspect(e) for e in experts]
    if not es:
        raise UserError("Pick at least one expert to compare with the base.")
    rep = M.compatibility(b, es)
    if not rep.ok:
        raise UserError(rep.sentence())
    return b, es


def _names(base: M.ModelInfo) -> list[str]:
    from ..checkpoint.naming import tensor_order
    return sorted((n for n, t in base.tensors.items() if t.is_float), key=tensor_order)


def _grid(base: M.ModelInfo, names: list[str]) -> tuple[list[str], list[str]]:
    layers = sorted({M.layer_of(n) for n in names if M.layer_of(n) is not None})
    present = {M.module_of(n) for n in names if M.layer_of(n) is not None}
    modules = [m for m in M.MODULE_KINDS if m in present] + sorted(present - set(M.MODULE_KINDS))
    return [f"layer {k}" for k in layers], modules


def _shared(t: torch.Tensor, shape: tuple) -> torch.Tensor:
    """An expert's tensor cut to the base's rows (an expert that adds tokens
    is compared on the shared vocabulary, as the engine merges it)."""
    if tuple(t.shape) != tuple(shape):
        t = t[: shape[0]]
    return t.to(torch.float32).reshape(-1)


def _tick(progress: Progress | None, i: int, n: int, what: str) -> None:
    if progress is not None and (i % max(1, n // 50) == 0 or i == n - 1):
        progress((i + 1) / n, f"{what}: tensor {i + 1} of {n}")


def _cos(dot: float, a: float, b: float) -> float | None:
    return dot / (a * b) ** 0.5 if a > 0 and b > 0 else None


def task_vectors(base, experts: list, progress: Progress | None = None) -> dict:
    """Norms and pairwise cosines of the task vectors τᵢ = θᵢ − θ₀.

    ``base`` and ``experts`` are references (zoo:NAME, folder, Hub id) or
    ModelInfo. Returns::

        {"experts": [ref, ...], "layers": ["layer 0", ...], "modules": ["q", ...],
         "norms":     {ref: [[‖τᵢ‖ per module] per layer]},       # None: no such tensor
         "rel_norms": {ref: [[‖τᵢ‖ / ‖θ₀‖ ...]]},                  # the change relative to the weights
         "cosines":   {"A vs B": [[cos(τ_A, τ_B) ...]]},          # None where a vector is zero
         "points": ["embed", "layer 0", ..., "norm", "lm_head"],
         "point_norms": {ref: [...]}, "point_rel_norms": {ref: [...]},
         "point_cosines": {"A vs B": [...]}}

    A group's norm is that of its tensors concatenated; its cosine is the
    cosine of the concatenated vectors. Results are cached per set of
    model fingerprints (they never change for the same files).
    """
    b, es = _infos(base, experts)
    key = ("tv", b.fingerprint(), tuple(e.fingerprint() for e in es))
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return _relabel(hit, [e.ref for e in es])
    names = _names(b)
    layers, modules = _grid(b, names)
    points = M.point_names(b.n_layers) if b.n_layers > 0 else []
    n = len(es)
    pairs = list(itertools.combinations(range(n), 2))
    # accumulators per group: base ‖θ₀‖², ‖τᵢ‖², ⟨τᵢ, τⱼ⟩
    acc: dict[Any, np.ndarray] = {}

    def add(group, sq0: float, sq: list[float], dots: list[float]) -> None:
        a = acc.setdefault(group, np.zeros(1 + n + len(pairs)))
        a += np.array([sq0, *sq, *dots])

    readers = [M.Reader(x) for x in [b, *es]]
    try:
        for i, name in enumerate(names):
            shape = b.tensors[name].shape
            t0 = readers[0].get(name).to(torch.float32).reshape(-1)
            taus = [_shared(r.get(name), shape) - t0 for r in readers[1:]]
            sq = [float(torch.dot(t, t)) for t in taus]
            dots = [float(torch.dot(taus[p], taus[q])) for p, q in pairs]
            sq0 = float(torch.dot(t0, t0))
            layer = M.layer_of(name)
            if layer is not None:
                add((f"layer {layer}", M.module_of(name)), sq0, sq, dots)
            add(point_of(name), sq0, sq, dots)
            _tick(progress, i, len(names), "task vectors")
    finally:
        for r in readers:
            r.close()

    def cell(group, j: int, rel: bool = False):
        a = acc.get(group)
        if a is None:
            return None
        norm = float(a[1 + j]) ** 0.5
        if rel:
            return norm / float(a[0]) ** 0.5 if a[0] > 0 else None
        return norm

    def cos(group, k: int):
        a = acc.get(group)
        if a is None:
            return None
        p, q = pairs[k]
        return _cos(float(a[1 + n + k]), float(a[1 + p]), float(a[1 + q]))

    refs = [e.ref for e in es]
    labels = [f"{refs[p]} vs {refs[q]}" for p, q in pairs]
    out = {
        "experts": refs, "layers": layers, "modules": modules, "points": points,
        "norms": {r: [[cell((L, m), j) for m in modules] for L in layers] for j, r in enumerate(refs)},
        "rel_norms": {r: [[cell((L, m), j, True) for m in modules] for L in layers] for j, r in enumerate(refs)},
        "cosines": {lab: [[cos((L, m), k) for m in modules] for L in layers] for k, lab in enumerate(labels)},
        "point_norms": {r: [cell(P, j) for P in points] for j, r in enumerate(refs)},
        "point_rel_norms": {r: [cell(P, j, True) for P in points] for j, r in enumerate(refs)},
        "point_cosines": {lab: [cos(P, k) for P in points] for k, lab in enumerate(labels)},
    }
    with _LOCK:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = out
    return _relabel(out, refs)


def _relabel(out: dict, refs: list[str]) -> dict:
    """A cached result under the references the caller used this time (the
    same files may be named zoo:math or by their folder)."""
    old = out["experts"]
    if old == refs:
        return out
    ren = dict(zip(old, refs))

    def pair(lab: str) -> str:
        a, b = lab.split(" vs ", 1) if lab.count(" vs ") == 1 else (lab, "")
        return f"{ren.get(a, a)} vs {ren.get(b, b)}" if b else lab

    res = dict(out)
    res["experts"] = list(refs)
    for k in ("norms", "rel_norms", "point_norms", "point_rel_norms"):
        res[k] = {ren.get(r, r): v for r, v in out[k].items()}
    for k in ("cosines", "point_cosines"):
        res[k] = {pair(lab): v for lab, v in out[k].items()}
    return res


def _state(merged) -> Mapping[str, torch.Tensor]:
    if hasattr(merged, "state_dict"):
        return merged.state_dict()
    if isinstance(merged, Mapping):
        return merged
    raise UserError("The merged model must be a loaded model or a dict of tensors.")


def _fit(a: np.ndarray, n: int) -> tuple[list[float], list[float], float] | None:
    """(cᵢ, shareᵢ, other) from a group's accumulators [‖Δ‖², ⟨Δ,τᵢ⟩.., G (n×n)]."""
    dd = float(a[0])
    if dd <= 0:
        return None
    bvec = a[1:1 + n]
    gram = a[1 + n:].reshape(n, n)
    # lstsq: a zero or repeated task vector makes G singular; the minimum-norm
    # solution then splits the change evenly between identical vectors
    c = np.linalg.lstsq(gram, bvec, rcond=None)[0]
    explained = float(c @ bvec)
    other = max(0.0, dd - explained) / dd
    return [float(x) for x in c], [float(x) for x in c * bvec / dd], other


def provenance(base, experts: list, merged, progress: Progress | None = None) -> dict:
    """Where the merged change came from, per point and per layer × module.

    ``merged``: a loaded model (its state_dict is read) or {name: tensor},
    holding at least the base's tensors (extra vocabulary rows are ignored).
    Returns::

        {"experts": [ref, ...], "points": [...], "layers": [...], "modules": [...],
         "coef":  {ref: [cᵢ per point]},     "share": {ref: [shareᵢ per point]},
         "other": [residual share per point], "delta_norm": [‖Δ‖ per point],
         "cell_coef": {ref: [[cᵢ per module] per layer]},
         "cell_other": [[residual share ...]]}

    None marks a group whose merged change is zero (nothing to explain).
    See the module docstring for the meaning of cᵢ, shareᵢ and other.
    """
    b, es = _infos(base, experts)
    state = _state(merged)
    names = _names(b)
    missing = [nm for nm in names if nm not in state]
    if missing:
        raise UserError(f"The merged model has no tensor {quoted(missing[0])}, so it was not merged from this base.")
    layers, modules = _grid(b, names)
    points = M.point_names(b.n_layers) if b.n_layers > 0 else []
    n = len(es)
    acc: dict[Any, np.ndarray] = {}

    def add(group, vec: np.ndarray) -> None:
        a = acc.get(group)
        if a is None:
            acc[group] = vec.copy()
        else:
            a += vec

    readers = [M.Reader(x) for x in [b, *es]]
    try:
        with torch.no_grad():
            for i, name in enumerate(names):
                shape = b.tensors[name].shape
                t0 = readers[0].get(name).to(torch.float32).reshape(-1)
                m = state[name].detach()
                if tuple(m.shape) != tuple(shape):
                    if m.dim() == len(shape) and tuple(m.shape[1:]) == tuple(shape[1:]) and m.shape[0] >= shape[0]:
                        m = m[: shape[0]]
                    else:
                        raise UserError(f"The merged {quoted(name)} is {list(m.shape)} but the base's is {list(shape)}.")
                # the dot products sum 10^5..10^7 products: in float32 their rounding moved a Task Arithmetic
                # merge's exact coefficient 1 to 0.9999995 on some CPUs (the summation order is the kernel's)
                delta = (m.to("cpu", torch.float32).reshape(-1) - t0).double()
                taus = [(_shared(r.get(name), shape) - t0).double() for r in readers[1:]]
                vec = np.empty(1 + n + n * n)
                vec[0] = float(torch.dot(delta, delta))
                for j, t in enumerate(taus):
                    vec[1 + j] = float(torch.dot(delta, t))
                for p in range(n):
                    for q in range(p, n):
                        g = float(torch.dot(taus[p], taus[q]))
                        vec[1 + n + p * n + q] = vec[1 + n + q * n + p] = g
                layer = M.layer_of(name)
                if layer is not None:
                    add((f"layer {layer}", M.module_of(name)), vec)
                add(point_of(name), vec)
                _tick(progress, i, len(names), "provenance")
    finally:
        for r in readers:
            r.close()

    refs = [e.ref for e in es]
    fits = {g: _fit(a, n) for g, a in acc.items()}

    def pick(group, what: int, j: int | None = None):
        f = fits.get(group)
        if f is None:
            return None
        return f[what] if j is None else f[what][j]

    return {
        "experts": refs, "points": points, "layers": layers, "modules": modules,
        "coef": {r: [pick(P, 0, j) for P in points] for j, r in enumerate(refs)},
        "share": {r: [pick(P, 1, j) for P in points] for j, r in enumerate(refs)},
        "other": [pick(P, 2) for P in points],
        "delta_norm": [float(acc[P][0]) ** 0.5 if P in acc else None for P in points],
        "cell_coef": {r: [[pick((L, m), 0, j) for m in modules] for L in layers] for j, r in enumerate(refs)},
        "cell_other": [[pick((L, m), 2) for m in modules] for L in layers],
    }
