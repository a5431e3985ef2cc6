"""LED-Merging (ACL 2025): Location, Election, Disjoint.

    θ = θ₀ + Σᵢ λᵢ (mᵢ ⊙ τᵢ)

1. Location -- importance scores per weight (importance.py), on the base
   AND on each expert, both with that expert's task data: I(θ₀; Dᵢ), I(θᵢ; Dᵢ).
2. Election -- Eᵢ = top_r(I(θ₀; Dᵢ), rᵢ) ∩ top_r(I(θᵢ; Dᵢ), rᵢ) per tensor
   (``election: "11"``; "10" base only and "01" expert only for the ablation).
3. Disjoint -- mᵢ = Eᵢ \\ ∪_{j≠i} Eⱼ (``disjoint: false`` skips it).
4. Merge -- the masked task vectors, each scaled by its λᵢ (``weight``).

Recipe (per model): ``task`` (entry key, or ``parameters.task``), ``mask_ratio``
rᵢ, ``weight`` λᵢ, ``location_data`` (a JSONL of {prompt, response} or an
AdvBench CSV; empty: the built-in data of the task). Global: ``election``,
``disjoint``, ``location`` (snip | wanda | magnitude | random),
``n_samples``, ``seed``. A model's task is, in order: ``parameters.task``
unless "auto", the entry's ``task`` unless "custom", the name of a built-in
model (zoo:safety is a safety expert), else custom -- which needs
``location_data``. When ``mask_ratio`` is not written anywhere in the
recipe, rᵢ is the paper's reference for the task (the Param's ``by_task``
defaults, RATIO_BY_TASK: 0.1 safety, 0.4 math, 0.5 code; 0.4 for custom);
the plan resolves it, and the UI asks the registry for it.

Scores are cached (memory and disk), so moving r, λ, the election code or
the disjoint switch re-elects and re-merges with no backward pass; only a
new location method, sample count, seed or data set scores again.

Vocabulary growth: an expert with extra token rows is elected on the rows
it shares with the base (its scores are cut to them, the engine cuts its
task vector the same way); its extra rows are copied unchanged by the
engine, whose notes say so.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ...errors import quoted
from ..base import MethodSpec, Param, TensorContext, register

# the paper's reference r on Llama-3-8B, by task, and for any other task;
# the one place they are written (the registry hands them to the UI)
RATIO_BY_TASK = (("safety", 0.1), ("math", 0.4), ("code", 0.5))
RATIO_DEFAULT = 0.4
TASK_CHOICES = ("auto", "safety", "math", "code", "custom")
BUILTIN_TASKS = ("safety", "math", "code")   # tasks with built-in location data


class Expert:
    """One expert as LED sees it: reference, task, r, λ, location data."""

    def __init__(self, info, task: str, ratio: float, weight: float, rows: list[dict], data_label: str):
        self.info, self.task, self.ratio, self.weight = info, task, ratio, weight
        self.rows, self.data_label = rows, data_label

    @property
    def ref(self) -> str:
        return self.info.ref


class Setup:
    """Everything LED decides from the merge plan before any score is computed."""

    def __init__(self, p):
        from . import importance
        from ...errors import UserError
        glob = p.global_params
        self.election, self.disjoint, self.location = glob["election"], glob["disjoint"], glob["location"]
        self.n, self.seed = glob["n_samples"], glob["seed"]
        self.base = p.base
        self.notes = list(p.notes)
        self.experts: list[Expert] = []
        for task, info, mp in zip(p.tasks, p.sources, p.model_params):
            path = mp["location_data"]
            rows: list[dict] = []
            if self.location in ("snip", "wanda"):
                if path:
                    rows = importance.read_location_data(path)[:self.n]
                    label = f"{quoted(info.ref)} on {quoted(os.path.basename(path))}"
                elif task in BUILTIN_TASKS:
                    rows = importance.builtin_rows(task, self.n, self.seed, p.base.path)
                    label = f"{quoted(info.ref)} on built-in {task} data"
                else:
                    raise UserError(f"{quoted(info.ref)} has task {task}, so LED needs its location data: set its "
                                    "location_data to a JSONL of prompt/response or an AdvBench CSV "
                                    "(or give it task safety, math or code).")
                if len(rows) < self.n and path:
                    self.notes.append(f"{quoted(path)} holds {len(rows)} samples, fewer than n_samples={self.n}; "
                                      "all of them are used.")
            else:
                label = quoted(info.ref)
            self.experts.append(Expert(info, task, mp["mask_ratio"], mp["weight"], rows, label))

    def scores(self, progress=None):
        """(base scores per expert, expert scores per expert, all cached?)."""
        from . import importance as I
        jobs = []
        for e in self.experts:
            jobs.append(I.Job(self.base, e.rows, f"the base on {e.task} data", self.base))
            jobs.append(I.Job(e.info, e.rows, e.data_label, self.base))
        got, all_cached = I.compute(jobs, self.location, seed=self.seed, progress=progress)
        return got[0::2], got[1::2], all_cached


class Prepared:
    """Per-tensor ``aux`` for the engine: {"masks": [mᵢ]};
    ``summary()``: what the UI plots, gathered from the same masks."""

    def __init__(self, setup: Setup, base_scores: list, expert_scores: list, cached: bool):
        from .analysis import Summary
        self.plan = setup
        self.base_scores, self.expert_scores = base_scores, expert_scores
        self.cached = cached
        self.notes = setup.notes
        self._summary = Summary(setup)

    def aux(self, name: str) -> dict:
        from . import masks
        setup = self.plan
        shape = setup.base.tensors[name].shape
        rows = shape[0] if shape else None   # a grown vocabulary: elect on the shared rows only
        code = setup.election
        used = [[s for s, on in ((b, code != "01"), (x, code != "10")) if on]
                for b, x in zip(self.base_scores, self.expert_scores)]
        ranked = [[s.ranked(name, rows) for s in sets] for sets in used]
        # rᵢ as read from the plan's Params (Expert.ratio) becomes its grid step jᵢ here, once per expert and
        # tensor: ``codes <= jᵢ`` is top_r(scores, rᵢ); None where no codes answer or rᵢ is off the grid
        steps = [next((masks.grid_step(e.ratio, c.size) for c in cs if c is not None), None)
                 for cs, e in zip(ranked, setup.experts)]
        imp = [s.total(name, rows) for s in self.expert_scores]
        imp_base = [s.total(name, rows) for s in self.base_scores]
        if all(j is not None and all(c is not None for c in cs) for cs, j in zip(ranked, steps)):
            # every set answers from its rank codes: elect in cache-sized chunks, counting on the way
            out_shape = ranked[0][0].shape
            fin, counts, inter = masks.elect_codes([[c.reshape(-1) for c in cs] for cs in ranked], steps,
                                                   setup.disjoint, self._summary.safety)
            final = [torch.from_numpy(x).view(out_shape) for x in fin]
            self._summary.add_counts(name, imp, imp_base, counts, inter)
        else:
            # per set: its codes where they answer (the same mask), else top_r of its scores
            tops = [[s.mask(name, e.ratio, rows, c, j) for s, c in zip(sets, cs)]
                    for sets, cs, j, e in zip(used, ranked, steps, setup.experts)]
            elected = [masks.combine(*t) if len(t) == 2 else t[0] for t in tops]
            final = masks.disjoint(elected) if setup.disjoint else elected
            self._summary.add(name, imp, imp_base, elected, final)
        return {"masks": final}

    def summary(self) -> dict:
        """The schema of core.service.led_analysis, for the tensors ``aux`` has seen."""
        return self._summary.to_dict(self.cached)


def prepare(plan, progress=None) -> Prepared:
    """Scores for every expert (cached), from the merge plan (core.merge.plan.Plan)."""
    setup = Setup(plan)
    b, e, cached = setup.scores(progress)
    return Prepared(setup, b, e, cached)


def analyse(plan, progress=None) -> dict:
    """The UI's pictures without merging: every tensor's masks, summarised."""
    prep = prepare(plan, progress)
    for name in plan.names:
        if plan.base.tensors[name].is_float:
            prep.aux(name)
    return prep.summary()


def merge(base: torch.Tensor, deltas: list, model_params: list, global_params: dict,
          ctx: TensorContext) -> torch.Tensor:
    masks = ctx.aux.get("masks")
    if masks is None or len(masks) != len(deltas):
        raise RuntimeError(f"LED needs one mask per expert for {ctx.name} from its prepare step")
    if ctx.offset or masks[0].numel() != base.numel():
        # a row block of the tensor (the engine feeds elementwise methods in
        # blocks that stay in cache): the masks' entries of those rows
        masks = [m.reshape(-1)[ctx.offset:ctx.offset + base.numel()].view(base.shape) for m in masks]
    cpu = base.device.type == "cpu" and base.dtype == torch.float32
    if not cpu:
        out = torch.zeros_like(base)
        for d, m, p in zip(deltas, masks, model_params):
            if p["weight"]:
                out.add_(torch.where(m.to(d.device), d, 0.0), alpha=p["weight"])
        return out
    # numpy, one thread (torch's pool spins on a busy CPU, and this runs for
    # every tensor of every re-merge): λᵢ·τᵢ times the 0/1 mask, summed --
    # 3-4x faster than masked adds into zeros. An entry outside the mask
    # becomes ±0, which leaves any sum unchanged; the final + 0 turns a -0
    # into the +0 that adding to zeros gives, so the bits are the same.
    out = None
    for d, m, p in zip(deltas, masks, model_params):
        lam = p["weight"]
        if lam == 0:
            continue
        t = np.multiply(d.contiguous().numpy(), np.float32(lam))
        t *= m.cpu().numpy()
        if out is None:
            out = t
        else:
            out += t
    if out is None:
        return torch.zeros_like(base)
    out += np.float32(0)
    return torch.from_numpy(out).view(base.shape)


SPEC = register(MethodSpec(
    name="led", label="LED-Merging", fn=merge, prepare=prepare,
    summary="Locate each expert's important weights (scores on its task data, in the base and the expert), "
            "elect those important in both, keep only weights no other expert elected, add those task-vector entries.",
    params=[
        Param("weight", 1.0, 0.0, 2.0, per_model=True, help="λᵢ: this expert's own scale of its masked task vector (the paper's λᵢ; not a global λ)"),
        Param("mask_ratio", RATIO_DEFAULT, 0.0, 1.0, per_model=True, by_task=RATIO_BY_TASK, symbol="r",
              help="rᵢ: fraction of each tensor's weights located as important (kept); its default follows the task: "
                   + ", ".join(f"{r:g} {task}" for task, r in RATIO_BY_TASK) + f", {RATIO_DEFAULT:g} custom"),
        Param("task", "auto", kind="choice", choices=TASK_CHOICES, per_model=True,
              help="which task data locates this expert's weights; auto: the model entry's task, or the "
                   "built-in model's name"),
        Param("location_data", "", kind="str", per_model=True, label="location data (file)",
              help="JSONL of {prompt, response} or AdvBench CSV (goal,target); empty: the built-in data of the task"),
        Param("election", "11", kind="choice", choices=("11", "10", "01"),
              help="11: important in base AND expert (LED); 10: base scores only; 01: expert scores only"),
        Param("disjoint", True, kind="bool",
              help="drop weights elected by more than one expert, so no expert's update overwrites another's"),
        Param("location", "snip", kind="choice", choices=("snip", "wanda", "magnitude", "random"),
              help="importance score: SNIP |θ|·Σ|∂L/∂θ| (LED), Wanda |W|·‖X‖, magnitude |θ|, or random"),
        Param("n_samples", 128, 1, 4096, kind="int", help="location samples per expert (first n of a user file)"),
        Param("seed", 0, 0, 2**63 - 1, kind="int", help="seed of the built-in location data and of random scores"),
    ],
    elementwise=True,   # given the masks, entry j needs only entry j: the engine may feed row blocks
))
