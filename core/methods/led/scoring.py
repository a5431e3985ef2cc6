"""LED-Merging's Location step, the model side: per-weight importance scores.

For every weight tensor of a model (Linear weights, norms, embeddings,
lm_head) one non-negative score per entry, measured on a task's location
data -- prompts with reference answers, the loss on the answer tokens only:

* ``snip`` (the method): I(θ) = |θ| ⊙ Σₖ |∂Lₖ/∂θ|, one backward pass per
  sample k, Lₖ the mean cross-entropy over sample k's answer tokens (the
  answer and the end-of-turn token). This is what the reference code
  (MqLeet/LED-Merging, locate/lib/model_wrapper.py, ``prune_wandg``) does:
  batches of one sample, ``labels`` = -100 on the prompt, |grad| summed over
  batches, times |W|. The absolute value is taken per sample, so samples
  that pull a weight in opposite directions do not cancel.
* ``wanda`` (ablation): |W| ⊙ ‖X‖₂ with X the module's input over the
  answer positions (no backward pass). For a Linear W (out × in) the norm
  is per input channel; for a norm layer its input's per-channel norm (the
  reference wraps norm modules the same way); for the embedding, a linear
  map from one-hot tokens, ‖X_t‖₂ = √(count of token t).
* ``magnitude`` and ``random`` (ablations) need no model run; they are
  computed per tensor in importance.py.

Format of a sample: the model's chat template with the prompt as a user
turn and generation prompt on, then the response tokens and the end-of-turn
(eos) token; prompt and response are tokenized separately so a BPE merge
cannot blur where the answer starts.
"""
from __future__ import annotations

from typing import Callable

import torch

Progress = Callable[[float, str], None]

MAX_LENGTH = 512

# backward (SNIP) and forward (Wanda) passes run here; tests and the UI's
# "was it cached?" read them
STATS = {"backward": 0, "forward": 0}


class Sample:
    """One encoded location sample: token ids and which of them are answer tokens."""

    __slots__ = ("ids", "answer")

    def __init__(self, ids: torch.Tensor, answer: torch.Tensor):
        self.ids = ids          # (T,) int64
        self.answer = answer    # (T,) bool: True on answer tokens (the loss targets)


def encode(tokenizer, rows: list[dict], max_length: int = MAX_LENGTH) -> list[Sample]:
    """Chat-template prompt + response + eos, tokenized; longer ones are cut
    at ``max_length`` and a sample left with no answer token is dropped."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    eos = tokenizer.eos_token_id
    out = []
    for r in rows:
        if has_template:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                                   add_generation_prompt=True)
        else:
            prompt = r["prompt"] + "\n"
        p = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        a = list(tokenizer(r["response"], add_special_tokens=False)["input_ids"])
        if eos is not None:
            a.append(int(eos))
        ids = (p + a)[:max_length]
        answer = ([False] * len(p) + [True] * len(a))[:max_length]
        # the first token cannot be a target (nothing predicts it)
        if len(ids) < 2 or not any(answer[1:]):
            continue
        out.append(Sample(torch.tensor(ids, dtype=torch.long), torch.tensor(answer, dtype=torch.bool)))
    return out


# --------------------------------------------------------------- scoring
def _tick(progress: Progress | None, span, frac: float, msg: str) -> None:
    if progress is not None:
        progress(span[0] + (span[1] - span[0]) * frac, msg)


def _named_weights(model) -> list[tuple[str, torch.nn.Parameter]]:
    """Every floating-point parameter under its checkpoint name; tied
    weights appear under each of their names (same tensor)."""
    return [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if p.is_floating_point()]


def answer_loss(model, sample: Sample) -> torch.Tensor:
    """Mean cross-entropy over the sample's answer tokens (prompt tokens are
    context only), as the reference's labels=-100 on the prompt gives."""
    dev = next(model.parameters()).device
    ids = sample.ids.to(dev).unsqueeze(0)
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    target = sample.ids[1:].to(dev)
    keep = sample.answer[1:].to(dev)
    return torch.nn.functional.cross_entropy(logits[keep], target[keep])


def snip(model, samples: list[Sample], progress: Progress | None = None, span=(0.0, 1.0),
         label: str = "model") -> dict[str, torch.Tensor]:
    """{name: |θ| ⊙ Σₖ |∂Lₖ/∂θ|} (float32, CPU) with one backward pass per sample.

    Streams layer by layer: each parameter's gradient is folded into its
    accumulator the moment the backward pass has finished it, and freed, so
    the pass holds one gradient at a time instead of a model-sized set
    (peak: the model, the accumulators and one layer's gradient).
    """
    named = _named_weights(model)
    uniq: dict[int, torch.nn.Parameter] = {}
    for _, p in named:
        uniq.setdefault(id(p), p)
    params = list(uniq.values())
    acc = {id(p): torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params}
    was = [(p.requires_grad, p.grad) for p in params]
    # A sample touches a few dozen of the vocabulary's rows, but the input embedding's dense backward makes
    # a vocabulary-sized gradient (545 MB at 0.5B, held next to lm_head's when they are tied) and spends
    # a third of the pass on it; a sparse one holds the touched rows only. Equal up to the order in which
    # a repeated token's rows are summed.
    emb = model.get_input_embeddings()
    sparse_was = emb.sparse if isinstance(emb, torch.nn.Embedding) else None

    def fold(p: torch.nn.Parameter) -> None:
        g = p.grad
        if g.is_sparse:
            g = g.coalesce()     # a token used twice: |g₁ + g₂|, not |g₁| + |g₂|
        acc[id(p)].add_(g.abs_() if g.dtype == torch.float32 else g.abs().float())
        p.grad = None
    hooks = []
    for p in params:
        p.requires_grad_(True)
        p.grad = None
        hooks.append(p.register_post_accumulate_grad_hook(fold))
    if sparse_was is not None:
        emb.sparse = True
    try:
        for i, s in enumerate(samples):
            answer_loss(model, s).backward()
            STATS["backward"] += 1
            _tick(progress, span, (i + 1) / len(samples), f"SNIP scores of {label}: sample {i + 1} of {len(samples)}")
    finally:
        if sparse_was is not None:
            emb.sparse = sparse_was
        for h in hooks:
            h.remove()
        for p, (w, g) in zip(params, was):
            p.requires_grad_(w)
            p.grad = g
    with torch.no_grad():
        for p in params:   # in place: no second model-sized copy
            acc[id(p)].mul_(p.detach().abs().float())
    return {name: acc[id(p)].cpu() for name, p in named}


def _answer_rows(x: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """(n, C) rows of a module's input at the answer positions of one sample
    (batch of one). The position axis is the first one of the sample's
    length: (T, C) for most modules, (T, heads, C) or (heads, T, C) for
    per-head norms, (T, C) after an MoE block flattened its tokens."""
    x = x.detach().float()
    if x.dim() >= 3 and x.shape[0] == 1:
        x = x[0]
    axis = next((i for i in range(x.dim() - 1) if x.shape[i] == answer.numel()), None)
    if axis is not None:
        x = x.movedim(axis, 0)[answer]
    return x.reshape(-1, x.shape[-1])


def _fused_experts(module) -> bool:
    """transformers' fused experts (``use_experts_implementation``): one 3-D
    ``down_proj`` (and ``gate_up_proj`` or ``up_proj``) for every expert, a
    forward taking (hidden_states, top_k_index, top_k_weights)."""
    return (hasattr(module, "has_gate") and hasattr(module, "is_transposed")
            and isinstance(getattr(module, "down_proj", None), torch.nn.Parameter))


class _ExpertInputs:
    """Per expert, Σ x² over the answer tokens routed to it, of the up
    projection's input and of the down projection's input (recomputed with
    the module's own weights, gate and activation), and the token count."""

    def __init__(self, module):
        self.m = module
        self.up = "gate_up_proj" if module.has_gate else "up_proj"
        self.sq_in: dict[int, torch.Tensor] = {}
        self.sq_mid: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}

    def _linear(self, x, w, b):
        y = x @ w if self.m.is_transposed else x @ w.t()
        return y + b if b is not None else y

    def __call__(self, _module, inputs, _output, answer):
        hidden, index = inputs[0], inputs[1]
        keep = answer if hidden.shape[0] == answer.numel() else torch.ones(hidden.shape[0], dtype=torch.bool)
        hidden, index = hidden.detach().float()[keep], index[keep]
        m = self.m
        for e in index.unique().tolist():
            if e >= m.down_proj.shape[0]:
                continue
            x = hidden[(index == e).any(-1)]
            bias = getattr(m, f"{self.up}_bias")[e].float() if m.has_bias else None
            h = self._linear(x, getattr(m, self.up)[e].detach().float(), bias)
            h = m._apply_gate(h) if m.has_gate else m.act_fn(h)
            for store, v in ((self.sq_in, x), (self.sq_mid, h.detach())):
                s = (v * v).sum(0)
                store[e] = store[e] + s if e in store else s
            self.count[e] = self.count.get(e, 0) + x.shape[0]

    def scores(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """|W| ⊙ ‖X‖₂ for the fused parameter ``name`` (…up/down_proj, or a bias)."""
        out = torch.zeros_like(w)
        attr = name.rsplit(".", 1)[-1]
        for e, n in self.count.items():
            if attr.endswith("_bias"):
                out[e] = w[e] * float(n) ** 0.5
                continue
            norm = (self.sq_in if attr == self.up else self.sq_mid)[e].sqrt().cpu()
            out[e] = w[e] * (norm.unsqueeze(1) if self.m.is_transposed else norm.unsqueeze(0))
        return out


def wanda(model, samples: list[Sample], progress: Progress | None = None, span=(0.0, 1.0),
          label: str = "model") -> dict[str, torch.Tensor]:
    """{name: |W| ⊙ ‖X‖₂} over the answer positions (see the module doc).

    Linear-like weights (nn.Linear, GPT-2's Conv1D, a router's 2-D weight)
    get one factor per input channel, norms per channel, fused MoE experts
    per expert from the tokens routed to each.
    """
    from transformers.pytorch_utils import Conv1D
    from ...errors import UserError, quoted
    named = dict(_named_weights(model))
    sq: dict[str, torch.Tensor] = {}
    in_dim: dict[str, int] = {}           # module -> which weight axis its input channels run along
    experts: dict[str, _ExpertInputs] = {}
    looked: dict[str, torch.Tensor] = {}  # other embeddings -> uses of each row
    current: dict = {}
    handles = []

    def hook(prefix):
        def fn(_module, inputs, _output):
            x = _answer_rows(inputs[0], current["answer"])
            s = (x * x).sum(0)
            sq[prefix] = sq[prefix] + s if prefix in sq else s
        return fn

    def uses(count: torch.Tensor):
        def fn(_module, inputs, _output):   # returns None: the output stays the module's
            idx = _answer_rows(inputs[0].unsqueeze(-1), current["answer"]).long().reshape(-1).cpu()
            count.add_(torch.bincount(idx, minlength=count.numel()).float()[:count.numel()])
        return fn

    embed = model.get_input_embeddings()
    embed_name = next((n[:-len(".weight")] for n, p in named.items()
                       if embed is not None and p is embed.weight and n.endswith(".weight")), None)
    for mname, module in model.named_modules():
        if _fused_experts(module):
            experts[mname] = ex = _ExpertInputs(module)
            handles.append(module.register_forward_hook(
                lambda m_, i, o, ex=ex: ex(m_, i, o, current["answer"])))
            continue
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.nn.Parameter) or module is embed or f"{mname}.weight" not in named:
            continue
        if isinstance(module, torch.nn.Embedding):
            # another lookup table (GPT-2's positions): like the token embedding,
            # a linear map from one-hot indices, ‖X_i‖₂ = √(uses of row i)
            looked[mname] = torch.zeros(w.shape[0], dtype=torch.float32)
            handles.append(module.register_forward_hook(uses(looked[mname])))
        elif w.dim() == 2:
            # nn.Linear and routers hold (out, in); GPT-2's Conv1D (in, out)
            in_dim[mname] = 0 if isinstance(module, Conv1D) else 1
            handles.append(module.register_forward_hook(hook(mname)))
        elif w.dim() == 1 and "norm" in type(module).__name__.lower():
            handles.append(module.register_forward_hook(hook(mname)))
    counts = None
    if embed is not None:
        counts = torch.zeros(embed.weight.shape[0], dtype=torch.float32)
    dev = next(model.parameters()).device
    n_tokens = 0
    try:
        with torch.no_grad():
            for i, s in enumerate(samples):
                current["answer"] = s.answer.to(dev)
                model(input_ids=s.ids.to(dev).unsqueeze(0), use_cache=False)
                STATS["forward"] += 1
                n_tokens += int(s.answer.sum())
                if counts is not None:
                    counts += torch.bincount(s.ids[s.answer], minlength=counts.numel()).float()[:counts.numel()]
                _tick(progress, span, (i + 1) / len(samples),
                      f"Wanda scores of {label}: sample {i + 1} of {len(samples)}")
    finally:
        for h in handles:
            h.remove()
    out = {}
    with torch.no_grad():
        for name, p in named.items():
            w = p.detach().abs().float().cpu()
            prefix, _, leaf = name.rpartition(".")
            if prefix in experts:
                out[name] = experts[prefix].scores(name, w)
            elif leaf == "weight" and prefix == embed_name and counts is not None:
                out[name] = w * counts.sqrt().unsqueeze(1)
            elif leaf == "weight" and prefix in looked:
                out[name] = w * looked[prefix].sqrt().unsqueeze(1)
            elif leaf == "weight" and prefix in sq and (w.dim() == 1 or sq[prefix].numel() == w.shape[in_dim[prefix]]):
                norm = sq[prefix].sqrt().cpu()
                out[name] = w * (norm if w.dim() == 1 else norm.unsqueeze(0) if in_dim[prefix] == 1
                                 else norm.unsqueeze(1))
            elif leaf == "bias" and prefix in sq:
                # a bias is a weight on a constant input 1: ‖X‖₂ = √(answer tokens)
                out[name] = w * float(n_tokens) ** 0.5
            elif w.dim() >= 3:
                # zeros would silently drop every update of this tensor
                raise UserError(f"Wanda cannot see the inputs of {quoted(name)} ({type(model).__name__}); "
                                "use location snip or magnitude for this model.")
            else:
                out[name] = torch.zeros_like(w)   # no activation evidence: never elected
    return out
