"""What the UI plots for LED-Merging: located, elected and taken weights per
layer x module, and the safety/utility overlap (schema: core.service.led_analysis)."""
from __future__ import annotations

import numpy as np

from . import prepare

_OUTSIDE = {"embed": "embed", "final_norm": "norm", "head": "lm_head"}


def analyse(plan, progress=None) -> dict:
    """What the UI plots for a merge plan; the schema is documented in core.service.led_analysis."""
    from . import masks
    from ... import checkpoint as M
    prep = prepare(plan, progress)
    plan = prep.plan
    experts = [e.ref for e in plan.experts]
    n_layers = max(0, plan.base.n_layers)
    names = [n for n in sorted(plan.base.tensors)
             if plan.base.tensors[n].is_float]
    modules = [m for m in M.MODULE_KINDS if any(M.layer_of(n) is not None and M.module_of(n) == m for n in names)]
    if any(M.layer_of(n) is not None and M.module_of(n) not in M.MODULE_KINDS for n in names):
        modules.append("other")
    outside = []
    for n in names:
        if M.layer_of(n) is None:
            lab = _OUTSIDE.get(M.module_of(n), M.module_of(n))
            if lab not in outside:
                outside.append(lab)
    order = list(_OUTSIDE.values())   # forward order: embed, norm, lm_head, then anything else
    outside.sort(key=lambda x: (order.index(x) if x in order else len(order), x))
    safety = next((e for e in plan.experts if e.task == "safety"), None)
    utility = [e for e in plan.experts if e is not safety]

    def cell(n: str) -> tuple[str, int | None, int | None]:
        """(which block, row, column) of a tensor."""
        layer, mod = M.layer_of(n), M.module_of(n)
        if layer is None:
            return "outside", None, outside.index(_OUTSIDE.get(mod, mod))
        return "grid", layer, modules.index(mod if mod in modules else "other")

    # accumulators: [kind][expert] -> {(block,row,col): [sum, count]}
    acc: dict = {k: {e: {} for e in experts} for k in ("importance", "importance_base", "elected", "taken")}
    ov: dict = {e.ref: {} for e in utility}
    for n in names:
        where = cell(n)
        numel = plan.base.tensors[n].numel
        bs = prep._scores(prep.base_scores, n)
        es = prep._scores(prep.expert_scores, n)
        code = plan.election
        elected, final = masks.masks_for(bs if code != "01" else [None] * len(bs), es if code != "10" else
                                         [None] * len(es), [e.ratio for e in plan.experts], code, plan.disjoint)
        a = {"elected": elected, "masks": final}
        for i, e in enumerate(experts):
            # numpy sums and counts: one thread, no pool spinning on a busy CPU
            for kind, total in (("importance", float(es[i].numpy().sum(dtype=np.float64))),
                                ("importance_base", float(bs[i].numpy().sum(dtype=np.float64))),
                                ("elected", int(np.count_nonzero(elected[i].numpy()))),
                                ("taken", int(np.count_nonzero(final[i].numpy())))):
                s = acc[kind][e].setdefault(where, [0.0, 0])
                s[0] += total
                s[1] += numel
        if safety is not None:
            si = plan.experts.index(safety)
            for u in utility:
                inter, union = masks.jaccard_counts(a["elected"][si], a["elected"][plan.experts.index(u)])
                s = ov[u.ref].setdefault(where, [0, 0])
                s[0] += inter
                s[1] += union

    def grid(d: dict) -> list[list]:
        return [[_ratio(d.get(("grid", k, j))) for j in range(len(modules))] for k in range(n_layers)]

    def flat(d: dict) -> list:
        return [_ratio(d.get(("outside", None, j))) for j in range(len(outside))]

    out = {"layers": [f"layer {k}" for k in range(n_layers)], "modules": modules, "outside": outside,
           "experts": experts, "tasks": {e.ref: e.task for e in plan.experts},
           "mask_ratio": {e.ref: e.ratio for e in plan.experts}, "weight": {e.ref: e.weight for e in plan.experts},
           "election": plan.election, "disjoint": plan.disjoint, "location": plan.location,
           "n_samples": {e.ref: len(e.rows) for e in plan.experts}, "safety_expert": safety.ref if safety else None,
           "cached": prep.cached, "notes": list(plan.notes)}
    for kind in acc:
        out[kind] = {e: grid(acc[kind][e]) for e in experts}
        out[kind + "_outside"] = {e: flat(acc[kind][e]) for e in experts}
    out["overlap"] = {u: grid(ov[u]) for u in ov}
    out["overlap_outside"] = {u: flat(ov[u]) for u in ov}
    if safety is None:
        out["notes"].append("No expert has task safety, so there is no safety/utility overlap to show.")
    return out


def _ratio(s) -> float | None:
    if s is None or not s[1]:
        return None
    return float(s[0]) / float(s[1])
