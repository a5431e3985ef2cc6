"""What the UI plots for LED-Merging, gathered while the masks are made:
located, elected and taken weights per layer x module, and the overlap of
the safety expert's elected weights with each utility expert's (schema:
core.service.led_analysis).

``Summary.add`` takes one tensor's numbers as the merge elects its masks,
so a merge result carries the pictures and drawing prepares nothing again.
Cells pool every tensor of a layer and module kind: means are Σ/Σnumel,
Jaccard is Σ|∩|/Σ|∪|; the sums run in sorted tensor-name order whatever
order the tensors came in, so the numbers never depend on the walk.
"""
from __future__ import annotations

import numpy as np

from ... import checkpoint as M


class Summary:
    def __init__(self, setup):
        self.setup = setup
        self.safety = next((i for i, e in enumerate(setup.experts) if e.task == "safety"), None)
        self._tensors: dict[str, tuple] = {}

    def add(self, name: str, importance: list[float], importance_base: list[float], elected: list, final: list
            ) -> None:
        """One tensor: Σ scores of each expert and of the base on its data, and the elected and final masks."""
        # numpy counts (one thread); a mask not changed by Disjoint is counted once
        counts = []
        for e, f in zip(elected, final):
            ce = int(np.count_nonzero(e.numpy()))
            counts.append((ce, ce if f is e else int(np.count_nonzero(f.numpy()))))
        inter = [0] * len(elected)
        if self.safety is not None:
            s = elected[self.safety].numpy()
            inter = [int(np.count_nonzero(np.logical_and(s, x.numpy()))) if j != self.safety else 0
                     for j, x in enumerate(elected)]
        self.add_counts(name, importance, importance_base, counts, inter)

    def add_counts(self, name: str, importance: list[float], importance_base: list[float],
                   counts: list[tuple[int, int]], inter: list[int]) -> None:
        """One tensor from its counts: (|Eᵢ|, |mᵢ|) per expert and |E_safety ∩ Eᵢ|
        (masks.elect_codes gathers them while it elects)."""
        # a union is |a| + |b| - |a ∩ b|, so each overlap costs one pass
        overlap = []
        if self.safety is not None:
            overlap = [(inter[j], counts[self.safety][0] + counts[j][0] - inter[j])
                       for j in range(len(counts)) if j != self.safety]
        self._tensors[name] = (importance, importance_base, counts, overlap)

    def to_dict(self, cached: bool) -> dict:
        setup = self.setup
        experts = [e.ref for e in setup.experts]
        names = sorted(self._tensors)
        n_layers = max(0, setup.base.n_layers)
        modules = [m for m in M.MODULE_KINDS if any(M.layer_of(n) is not None and M.module_of(n) == m for n in names)]
        if any(M.layer_of(n) is not None and M.module_of(n) not in M.MODULE_KINDS for n in names):
            modules.append("other")
        order = list(M.OUTSIDE_POINTS.values())   # forward order: embed, norm, lm_head, then anything else
        outside = sorted({M.point_of(n) or M.module_of(n) for n in names if M.layer_of(n) is None},
                         key=lambda x: (order.index(x) if x in order else len(order), x))
        utility = [e.ref for i, e in enumerate(setup.experts) if i != self.safety]

        def cell(n: str) -> tuple:
            """(which block, row, column) of a tensor."""
            layer, mod = M.layer_of(n), M.module_of(n)
            if layer is None:
                return "outside", None, outside.index(M.point_of(n) or mod)
            return "grid", layer, modules.index(mod if mod in modules else "other")

        # accumulators: [kind][expert] -> {(block,row,col): [sum, count]}
        acc: dict = {k: {e: {} for e in experts} for k in ("importance", "importance_base", "elected", "taken")}
        ov: dict = {u: {} for u in utility} if self.safety is not None else {}
        for n in names:
            where, numel = cell(n), setup.base.tensors[n].numel
            imp, imp_base, counts, overlap = self._tensors[n]
            for i, e in enumerate(experts):
                for kind, total in (("importance", imp[i]), ("importance_base", imp_base[i]),
                                    ("elected", counts[i][0]), ("taken", counts[i][1])):
                    s = acc[kind][e].setdefault(where, [0.0, 0])
                    s[0] += total
                    s[1] += numel
            for u, (inter, union) in zip(ov, overlap):
                s = ov[u].setdefault(where, [0, 0])
                s[0] += inter
                s[1] += union

        def grid(d: dict) -> list[list]:
            return [[_ratio(d.get(("grid", k, j))) for j in range(len(modules))] for k in range(n_layers)]

        def flat(d: dict) -> list:
            return [_ratio(d.get(("outside", None, j))) for j in range(len(outside))]

        safety = setup.experts[self.safety] if self.safety is not None else None
        out = {"layers": [f"layer {k}" for k in range(n_layers)], "modules": modules, "outside": outside,
               "experts": experts, "tasks": {e.ref: e.task for e in setup.experts},
               "mask_ratio": {e.ref: e.ratio for e in setup.experts}, "weight": {e.ref: e.weight for e in setup.experts},
               "election": setup.election, "disjoint": setup.disjoint, "location": setup.location,
               "n_samples": {e.ref: len(e.rows) for e in setup.experts},
               "safety_expert": safety.ref if safety else None, "cached": cached, "notes": list(setup.notes)}
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
