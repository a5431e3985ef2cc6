"""What a merge returns: where it went, how long it took, per-tensor numbers."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TensorStats:
    """Cheap per-tensor scalars the UI plots (task-vector norms per layer)."""
    layer: int | None
    module: str
    merged_norm: float            # ‖θ − θ₀‖₂ of the merged tensor (shared rows)
    expert_norms: list[float]     # ‖τᵢ‖₂, in MergeResult.experts order


@dataclass
class MergeResult:
    out_dir: str | None
    n_tensors: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)          # refs, order of expert_norms
    stats: dict[str, TensorStats] = field(default_factory=dict)
    # the method's own pictures of this merge (LED's masks summary, ACM's
    # coefficients; schemas in core.service.led_analysis / acm_analysis), so
    # drawing them prepares nothing again; None for methods without prepare
    analysis: dict | None = None
    # a folder's lm-evaluation-harness commands (core.checkpoint.harness.Handoff); None for a live merge
    handoff: object = None

    def layer_norms(self) -> dict:
        """{layer or module name: {"merged": n, ref: n, ...}} with n the L2 norm over the layer.

        Norms of a layer are combined as sqrt(Σ norm²), i.e. the norm of the
        layer's concatenated task vector.
        """
        out: dict = {}
        for s in self.stats.values():
            key = s.layer if s.layer is not None else s.module
            row = out.setdefault(key, {"merged": 0.0, **{e: 0.0 for e in self.experts}})
            row["merged"] += s.merged_norm ** 2
            for e, n in zip(self.experts, s.expert_norms):
                row[e] += n ** 2
        return {k: {kk: vv ** 0.5 for kk, vv in v.items()} for k, v in out.items()}
