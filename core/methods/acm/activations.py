"""Activation capture and mutual information for ACM.

ACM (Activation-Guided Consensus Merging, NeurIPS 2025) weighs each layer
of each expert by how much the expert's activations there still share with
the base's: the mutual information I_i^k between base and expert outputs
of layer k on the same calibration prompts. This module does the model
side of that -- choose calibration prompts, run the models, estimate MI --
and caches the result, so moving ACM's temperature re-weighs the layers
without another forward pass. The coefficients themselves are in
core.methods.acm.

Points. One MI value per "point" of the network, in forward order:
``embed`` (embedding output), ``layer 0`` ... ``layer L-1`` (each decoder
layer's output, i.e. the residual stream after it), ``norm`` (final norm
output) and ``lm_head`` (the logits, over the base's vocabulary).

The MI estimator (a documented choice, tested in tests/methods/test_acm.py)
is in mi.py.

Calibration prompts: K-means (K clusters, seeded) on the base model's mean
final hidden state of every pool prompt, then clusters are visited in turn
taking one seeded-random member each, until n are chosen -- "evenly per
cluster", with small clusters' share filled from the others.

Memory: models are loaded one at a time (the base first, then each
expert); for the base only the uint8 bin index of each kept pair is held,
at most n x points x MAX_PAIRS bytes (about 0.2 GB for 100 samples on a
32-layer model).
"""
from __future__ import annotations

import json
from typing import Callable, Iterable

import torch

from ... import checkpoint as M
from ... import userfiles
from ...scores import Cache
from ...errors import UserError, quoted
from .mi import BINS, mi_from_bins, rank_bins

Progress = Callable[[float, str], None]

MAX_PAIRS = 1 << 16     # per sample and point; bias of the plug-in estimate ~ BINS^2/(2n)
BATCH_SIZE = 16
MAX_LENGTH = 512
ESTIMATOR = f"rank-histogram-mm/bins={BINS}/pairs={MAX_PAIRS}/v1"   # part of every cache key

# forward passes run by this module, for tests and the UI's "was it cached?"
STATS = {"forward_batches": 0}

CACHE = Cache("acm", ESTIMATOR)    # files under CACHE_DIR/acm, memory in front


# --------------------------------------------------------------- points
class _Hooks:
    """Forward hooks that keep the latest output of every point (the model
    is asked for its embedding, blocks and final norm: checkpoint.layout)."""

    def __init__(self, model):
        embed, layers, norm = M.parts_or_refuse(model)
        self.names = M.point_names(len(layers))
        self.out: dict[str, torch.Tensor] = {}
        mods = [embed] + layers + [norm]
        self._handles = [m.register_forward_hook(self._keep(n)) for n, m in zip(self.names, mods)]

    def _keep(self, name: str):
        def hook(_module, _inputs, output):
            self.out[name] = (output[0] if isinstance(output, (tuple, list)) else output).detach()
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


# -------------------------------------------------------------- batching
class Batches:
    """The calibration texts tokenized once (with the base's tokenizer) and
    grouped by length, so every model sees exactly the same token ids."""

    def __init__(self, tokenizer, texts: list[str], batch_size: int = BATCH_SIZE, max_length: int = MAX_LENGTH):
        enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)
        ids = [list(x) for x in enc["input_ids"]]
        for i, x in enumerate(ids):
            if not x:
                raise UserError(f"Calibration sample {i + 1} is empty after tokenization.")
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
        self.n = len(ids)
        self.batches: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            width = len(ids[idx[0]])
            x = torch.full((len(idx), width), int(pad), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):   # right padding: positions stay 0..len-1
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            self.batches.append((idx, x, mask))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def mean_states(model, batches: Batches, progress: Progress | None = None, span=(0.0, 1.0)) -> torch.Tensor:
    """(n, hidden) mean over real tokens of the final hidden state (after the
    final norm), the sample embedding ACM clusters. Skips the lm_head."""
    dev = _device_of(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    out = None
    for b, (idx, x, mask) in enumerate(batches):
        STATS["forward_batches"] += 1
        h = decoder(input_ids=x.to(dev), attention_mask=mask.to(dev), use_cache=False).last_hidden_state
        h = h.float().cpu()
        if out is None:   # the width the decoder gives (GPT-2's config calls it n_embd)
            out = torch.zeros(batches.n, h.shape[-1], dtype=torch.float32)
        m = mask.unsqueeze(-1).float()
        out[idx] = (h * m).sum(1) / m.sum(1)
        _tick(progress, span, (b + 1) / len(batches), f"embedding calibration pool: batch {b + 1} of {len(batches)}")
    return out


def _staged(progress: Progress | None, k: int, n: int) -> Progress | None:
    """Progress whose message names the step: the bar shows the whole calibration's fraction, so a
    bare "batch 23 of 92" next to "4%" read as a mismatch."""
    return None if progress is None else (lambda frac, msg: progress(frac, f"step {k} of {n} · {msg}"))


def _tick(progress: Progress | None, span, frac: float, msg: str) -> None:
    if progress is not None:
        progress(span[0] + (span[1] - span[0]) * frac, msg)


def _pairs(act: torch.Tensor, length: int, sample: int, point: int, seed: int) -> torch.Tensor:
    """The sample's values at one point, flattened over real tokens, as a
    seeded subset of at most MAX_PAIRS entries (same subset for every model:
    it depends only on the shape and the seed)."""
    v = act[:length].reshape(-1).float()
    if v.numel() <= MAX_PAIRS:
        return v
    g = torch.Generator().manual_seed(hash((seed, sample, point, v.numel())) & 0x7FFFFFFF)
    return v[torch.randperm(v.numel(), generator=g)[:MAX_PAIRS].to(v.device)]


@torch.no_grad()
def _forward_points(model, hooks: _Hooks, x: torch.Tensor, mask: torch.Tensor, vocab: int) -> list[torch.Tensor]:
    """Outputs of every point for one batch, in ``hooks.names`` order."""
    dev = _device_of(model)
    STATS["forward_batches"] += 1
    hooks.out.clear()
    logits = model(input_ids=x.to(dev), attention_mask=mask.to(dev), use_cache=False).logits
    # an expert with a grown vocabulary is compared on the base's tokens only
    return [hooks.out[n] for n in hooks.names[:-1]] + [logits[..., :vocab]]


def _binned_points(model, hooks: _Hooks, batches: Batches, vocab: int, seed: int, progress: Progress | None,
                   span, label: str):
    """((sample, point), equal-frequency bins of that sample's values there), batch by batch."""
    for b, (idx, x, mask) in enumerate(batches):
        outs = _forward_points(model, hooks, x, mask, vocab)
        lengths = mask.sum(1).tolist()
        for r, i in enumerate(idx):
            for p, act in enumerate(outs):
                yield (i, p), rank_bins(_pairs(act[r], lengths[r], i, p, seed).cpu())
        _tick(progress, span, (b + 1) / len(batches), f"{label} activations: batch {b + 1} of {len(batches)}")


def base_bins(model, batches: Batches, seed: int = 0, progress: Progress | None = None,
              span=(0.0, 1.0)) -> tuple[list[str], dict[tuple[int, int], torch.Tensor]]:
    """(point names, {(sample, point): uint8 bins of the base's values})."""
    hooks = _Hooks(model)
    try:
        kept = {k: v.to(torch.uint8) for k, v in _binned_points(model, hooks, batches, int(model.config.vocab_size),
                                                                 seed, progress, span, "base")}
    finally:
        hooks.close()
    return hooks.names, kept


def expert_mi(model, batches: Batches, names: list[str], kept: dict, vocab: int, seed: int = 0,
              progress: Progress | None = None, span=(0.0, 1.0), label: str = "expert") -> list[float]:
    """I^k for one expert: per point, the mean over samples of MI(base, expert)."""
    hooks = _Hooks(model)
    if hooks.names != names:
        hooks.close()
        raise UserError(f"The {label} has {len(hooks.names) - 3} layers but the base has {len(names) - 3}; "
                        "ACM compares them layer by layer.")
    total = [0.0] * len(names)
    try:
        for (i, p), by in _binned_points(model, hooks, batches, vocab, seed, progress, span, label):
            total[p] += mi_from_bins(kept[(i, p)], by)
    finally:
        hooks.close()
    return [t / batches.n for t in total]


# -------------------------------------------------------- calibration set
def select_even(labels: Iterable[int], n: int, seed: int = 0) -> list[int]:
    """n indices spread evenly over clusters: clusters in turn, one seeded-
    random member each, until n are taken (sorted). Deterministic."""
    import numpy as np
    labels = np.asarray(list(labels))
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    chosen: list[int] = []
    depth = 0
    n = min(n, labels.size)
    while len(chosen) < n:
        for m in members:
            if depth < m.size and len(chosen) < n:
                chosen.append(int(m[depth]))
        depth += 1
    return sorted(chosen)


def kmeans_labels(features: torch.Tensor, k: int, seed: int = 0) -> list[int]:
    """K-means cluster of every row (scikit-learn, seeded, 10 restarts)."""
    from sklearn.cluster import KMeans
    x = features.double().numpy()
    k = max(1, min(k, x.shape[0]))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x).labels_.tolist()


def format_prompts(tokenizer, rows: list[dict]) -> list[str]:
    """``{"prompt": p}`` through the chat template (when the tokenizer has
    one), ``{"text": t}`` verbatim: a prompt is what a user would type, a text
    is already a document."""
    out = []
    has_template = bool(getattr(tokenizer, "chat_template", None))
    for r in rows:
        if "prompt" in r and has_template:
            out.append(tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                                     tokenize=False, add_generation_prompt=True))
        else:
            out.append(r.get("text", r.get("prompt")))
    return out


def read_jsonl(path: str) -> list[dict]:
    """Rows of a calibration JSONL: each line {"text": ...} or {"prompt": ...}."""
    what = "calibration file"
    rows = []
    for no, obj in userfiles.json_lines(path, what, userfiles.read_text(path, what)):
        key = next((k for k in ("text", "prompt") if isinstance(obj, dict) and k in obj), None)
        if key is None or not isinstance(obj[key], str) or not obj[key].strip():
            raise UserError(f"Line {no} of the {what} {quoted(path)} is not a JSON object with a "
                            "non-empty 'text' or 'prompt' string.")
        rows.append({key: obj[key]})
    if not rows:
        raise UserError(f"The calibration file {quoted(path)} holds no samples.")
    return rows


# ------------------------------------------------------------------ cache
def data_hash(rows: list[dict], tokenizer_dir: str | None = None, **knobs) -> str:
    """Identity of the calibration data as the models see it (scores.Cache.data_hash)."""
    return CACHE.data_hash(rows, tokenizer_dir, **knobs)


def cache_key(fingerprint: str, rows: list[dict], tokenizer_dir: str | None, *, n: int, k: int, seed: int,
              dtype: torch.dtype) -> str:
    """The file stem of a base's statistics: its fingerprint and the calibration data as it sees it;
    keyed by the length cap (a shorter context of the model's own is in its config, so in its
    fingerprint) and by the dtype the forward passes run in (bf16 activations bin differently)."""
    return f"{fingerprint}-" + data_hash(rows, tokenizer_dir, n=n, k=k, seed=seed, max_length=MAX_LENGTH,
                                         dtype=str(dtype).replace("torch.", ""))


def _load_entry(key: str) -> dict:
    hit = CACHE.remembered(key)
    if hit is not None:
        return hit
    entry: dict = {}
    path = CACHE.path(key, ".json")
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
        if not isinstance(entry, dict) or entry.get("estimator") != ESTIMATOR:
            raise ValueError("not an entry of this estimator")
    except FileNotFoundError:
        entry = {}
    except (OSError, ValueError) as exc:
        CACHE.report_broken(path, exc)     # recomputed and rewritten
        entry = {}
    return CACHE.remember(key, entry)


def _store_entry(key: str, entry: dict) -> None:
    entry["estimator"] = ESTIMATOR
    CACHE.remember(key, entry)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f)
    CACHE.write(key, ".json", write)


def clear_memory_cache() -> None:
    CACHE.clear_memory()


def layer_mi(base: M.ModelInfo, experts: list[M.ModelInfo], rows: list[dict], *, n_calibration: int,
             clusters: int, seed: int = 0, progress: Progress | None = None, device: str = "auto"
             ) -> tuple[list[str], dict[str, list[float]], dict]:
    """(points, {expert ref: I^k per point}, details) -- cached per
    (base fingerprint, calibration data hash) and then per expert fingerprint.

    Forward passes run only for what the cache lacks: nothing when only the
    temperature changed; the experts not seen before when one is added.
    ``details``: n_pool, n_calibration, clusters, selection (pool indices),
    cached (True when no forward pass ran).
    """
    dev = M.pick_device(device)
    dtype = M.default_dtype(dev) if dev != "cpu" else torch.float32
    key = cache_key(base.fingerprint(), rows, base.path, n=n_calibration, k=clusters, seed=seed, dtype=dtype)
    entry = dict(_load_entry(key))
    mi_by_fp: dict = dict(entry.get("experts") or {})
    todo = [e for e in experts if e.fingerprint() not in mi_by_fp]
    selection = entry.get("selection")
    cached = not todo and selection is not None
    if not cached:
        max_len = M.max_length(base, MAX_LENGTH)
        tok = M.load_tokenizer(base)
        texts = format_prompts(tok, rows)
        model = M.load_model(base, device=dev, dtype=dtype)
        steps = (selection is None) + 1 + len(todo)   # embed the pool (unless cached), the base, each expert
        with M.cpu_threads_for(model):   # tiny models: one thread is 3-10x faster on a busy CPU
            if selection is None:
                if clusters > len(texts):
                    raise UserError(f"ACM's clusters ({clusters}) exceed the {len(texts)} calibration samples; "
                                    "lower clusters or give more samples.")
                pool = Batches(tok, texts, max_length=max_len)
                feats = mean_states(model, pool, _staged(progress, 1, steps), (0.0, 0.15))
                selection = select_even(kmeans_labels(feats, clusters, seed), n_calibration, seed)
            batches = Batches(tok, [texts[i] for i in selection], max_length=max_len)
            names, kept = base_bins(model, batches, seed, _staged(progress, steps - len(todo), steps), (0.15, 0.3))
        del model   # one model in memory at a time
        vocab = int(base.config.get("vocab_size") or 0)
        share = 0.7 / max(1, len(todo))
        for j, e in enumerate(todo):
            em = M.load_model(e, device=dev, dtype=dtype)
            with M.cpu_threads_for(em):
                span = (0.3 + j * share, 0.3 + (j + 1) * share)
                mi_by_fp[e.fingerprint()] = expert_mi(em, batches, names, kept, vocab or int(em.config.vocab_size),
                                                      seed, _staged(progress, steps - len(todo) + 1 + j, steps), span,
                                                      label=f"{quoted(e.ref)}")
            del em
        entry = {"points": names, "selection": list(selection), "experts": mi_by_fp, "n_pool": len(rows)}
        _store_entry(key, entry)
    names = list(entry["points"])
    mi = {e.ref: list(mi_by_fp[e.fingerprint()]) for e in experts}
    details = {"n_pool": len(rows), "n_calibration": len(selection), "clusters": clusters,
               "selection": list(selection), "cached": cached, "estimator": ESTIMATOR}
    if progress is not None:
        progress(1.0, "mutual information ready" + (" (cached)" if cached else ""))
    return names, mi, details
