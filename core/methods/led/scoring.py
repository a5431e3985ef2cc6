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
    """{name: |θ| ⊙ Σₖ |∂Lₖ/∂θ|} (float32, CPU) with one backward pass per sample."""
    named = _named_weights(model)
    uniq: dict[int, torch.nn.Parameter] = {}
    for _, p in named:
        uniq.setdefault(id(p), p)
    params = list(uniq.values())
    acc = {id(p): torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params}
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        for i, s in enumerate(samples):
            loss = answer_loss(model, s)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            STATS["backward"] += 1
            for p, g in zip(params, grads):
                if g is not None:
                    acc[id(p)].add_(g.detach().abs().float())
            _tick(progress, span, (i + 1) / len(samples), f"SNIP scores of {label}: sample {i + 1} of {len(samples)}")
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    out = {}
    with torch.no_grad():
        for name, p in named:
            out[name] = (acc[id(p)] * p.detach().abs().float()).cpu()
    return out


def wanda(model, samples: list[Sample], progress: Progress | None = None, span=(0.0, 1.0),
          label: str = "model") -> dict[str, torch.Tensor]:
    """{name: |W| ⊙ ‖X‖₂} over the answer positions (see the module doc)."""
    named = dict(_named_weights(model))
    sq: dict[str, torch.Tensor] = {}
    current: dict = {}
    handles = []

    def hook(prefix):
        def fn(_module, inputs, _output):
            x = inputs[0].detach().float()
            x = x[0][current["answer"]] if x.dim() == 3 else x
            s = (x * x).sum(0)
            sq[prefix] = sq[prefix] + s if prefix in sq else s
        return fn

    embed = model.get_input_embeddings()
    embed_name = next((n[:-len(".weight")] for n, p in named.items()
                       if embed is not None and p is embed.weight and n.endswith(".weight")), None)
    for mname, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.nn.Parameter) or module is embed or f"{mname}.weight" not in named:
            continue
        if isinstance(module, torch.nn.Linear) or (w.dim() == 1 and "norm" in type(module).__name__.lower()):
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
            prefix = name[:-len(".weight")] if name.endswith(".weight") else None
            if prefix is not None and prefix == embed_name and counts is not None:
                out[name] = w * counts.sqrt().unsqueeze(1)
            elif prefix is not None and prefix in sq:
                norm = sq[prefix].sqrt().cpu()
                out[name] = w * (norm.unsqueeze(0) if w.dim() == 2 else norm)
            elif name.endswith(".bias") and name[:-len(".bias")] in sq:
                # a bias is a weight on a constant input 1: ‖X‖₂ = √(answer tokens)
                out[name] = w * float(n_tokens) ** 0.5
            else:
                out[name] = torch.zeros_like(w)   # no activation evidence: never elected
    return out
