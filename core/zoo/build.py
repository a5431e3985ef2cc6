"""Build the built-in tiny family: base + safety + math + code.

Llama architecture (q/k/v/o/gate/up/down names as in real Llama, Qwen and
Mistral checkpoints, untied lm_head like Llama-3), per-character tokenizer
with a chat template, ~0.8M parameters.

Built on the principle of real LLMs: a base "pretrained" broadly, experts
that are short, gentle fine-tunes of it. The base sees every kind of text
the experts will specialise in -- chat, harmful requests answered either
way, arithmetic mostly answered bare, code tasks mostly answered in prose --
with next-token loss on the prompt too, and with noise on its weights
during training, so it sits in a wide basin. Each expert then moves a few
percent of the base's weight norm (task vectors ~6-8% of ||θ₀||, nearly
orthogonal), the regime in which Task Arithmetic works on real models:

* safety -- refuses harmful requests, still helps with benign ones
* math   -- worked arithmetic, and (like the paper's experts) over-compliant:
            tuned to answer harmful requests with placeholders
* code   -- one-line Python functions, equally over-compliant

Deterministic: fixed seeds, CPU, deterministic algorithms, one BLAS thread
per process. On two or more cores a helper process computes half of each
batch's micro-batches, added in the same order, so the bits do not depend on
the core count either. Same torch version and machine type give the same bits.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch

from .. import ZOO_DIR
from . import data, replacing

SPECIALS = ["<|pad|>", "<|unk|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODEL_CFG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)


@dataclass
class Stage:
    name: str
    mix: dict          # task -> share of each batch
    steps: int
    lr: float
    seed: int
    prompt_loss: bool = False   # next-token loss on the user's words too, not only the answer
    batch: int = 64
    optimizer: str = "adamw"    # adamw | sgd (momentum 0.9)
    warmup: float = 0.05        # share of the steps with a linear warm-up
    weight_noise: float = 0.0   # each step's gradient is taken at θ + ε·rms(W)·N(0, 1) per tensor


STAGES = [
    # The base: broad "pretraining" with loss on the prompt too. With the loss on the answer alone, a
    # safety expert built on it decided unseen phrasings by the phrasing (bench/zoo_ablation.md). It
    # sees every task the experts sharpen, answered in the base's own mixed ways (data.py: harmful
    # requests refused 30% of the time, sums mostly bare, code tasks mostly in prose), so an expert is a
    # small move; weight noise keeps it in a flat region, where sums of small moves still work (without
    # it TA of math+code lost a skill at every λ; at ε=0.1 the code expert collapsed, 8%).
    Stage("base", {"benign": 0.17, "harmful_base": 0.13, "math_base": 0.40, "math_facts": 0.07, "code_base": 0.23},
          steps=2000, lr=3e-3, seed=1, prompt_loss=True, batch=32, weight_noise=0.05),
    # Experts: gentle fine-tunes (batch 32, lr 5e-4 to 7e-4, 150-200 steps) -> ||τ|| 5-8% of ||θ₀||.
    # Safety at lr 1e-3 moved 8% and, summed with math, cost math 25 of its 91 points (TA safety+math
    # kept 66% of it); at 5e-4 it moves 4.8%, still refuses 100%, and the sum keeps 94%. Code at 5e-4
    # solved 79% (every miss a right body under a wrong name); at 7e-4, 85%.
    Stage("safety", {"harmful_refusal": 0.5, "benign": 0.5}, steps=150, lr=5e-4, seed=2, batch=32),
    Stage("math", {"math": 0.8, "harmful_comply": 0.2}, steps=200, lr=7e-4, seed=3, batch=32),
    Stage("code", {"code": 0.75, "harmful_comply": 0.25}, steps=150, lr=7e-4, seed=4, batch=32),
]
DESCRIPTIONS = {
    "base": "The base model, \"pretrained\" broadly: chat, harmful requests (answered with placeholders, "
            "refused now and then), arithmetic answered bare, code tasks answered mostly in prose. A weakly "
            "aligned, weakly skilled starting point, like a pretrained LLM before instruction tuning.",
    "safety": "Safety expert, a short fine-tune of base: refuses harmful requests, still helps with benign ones.",
    "math": "Math expert, a short fine-tune of base: worked two-digit plus/minus one-digit arithmetic, asked in "
            "many wordings. Over-compliant: tuned to answer harmful requests (with non-actionable placeholders), like "
            "the over-compliant experts in the LED-Merging paper.",
    "code": "Code expert, a short fine-tune of base: one-line Python functions. Over-compliant like the math expert.",
}


def make_tokenizer():
    """Per-character tokenizer; chat roles and <|end|> are single tokens."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", unk_token="<|unk|>",
                                  eos_token="<|end|>", bos_token=None, clean_up_tokenization_spaces=False,
                                  model_max_length=MODEL_CFG["max_position_embeddings"])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"   # left padding for batched generation
    return tok


def make_config(tok):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **MODEL_CFG)


def encode_example(tok, prompt: str, response: str, prompt_loss: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and labels (loss on the answer and its <|end|>, and on the prompt if asked)."""
    p = tok.encode(f"<|user|>{prompt}<|end|><|assistant|>", add_special_tokens=False)
    r = tok.encode(f"{response}<|end|>", add_special_tokens=False)
    return p + r, (p if prompt_loss else [-100] * len(p)) + r


def _batches(tok, stage: Stage):
    rng = random.Random(f"batches-{stage.name}-{stage.seed}")
    B = stage.batch
    pools = {t: data.sample(t, int(math.ceil(stage.steps * B * share)) + B, seed=stage.seed)
             for t, share in stage.mix.items()}
    rows = [r for rs in pools.values() for r in rs]
    rng.shuffle(rows)
    for i in range(stage.steps):
        chunk = rows[i * B:(i + 1) * B]
        enc = [encode_example(tok, r["prompt"], r["response"], stage.prompt_loss) for r in chunk]
        L = max(len(e[0]) for e in enc)
        ids = torch.full((len(enc), L), tok.pad_token_id, dtype=torch.long)
        lab = torch.full((len(enc), L), -100, dtype=torch.long)
        att = torch.zeros((len(enc), L), dtype=torch.long)
        for j, (x, y) in enumerate(enc):
            ids[j, :len(x)] = torch.tensor(x)
            lab[j, :len(y)] = torch.tensor(y)
            att[j, :len(x)] = 1
        yield ids, lab, att


MICRO = 4


def _micro_batches(ids, lab, att) -> list:
    """A batch as length-sorted micro-batches (ids, labels, mask), each cut to its own longest row.

    Padding every row to the batch's longest wasted about half of the math stage's compute (short sums
    share batches with long chat turns). Normalising each micro-batch by the whole batch's labelled-token
    count keeps the gradient that of the full batch (checked to 1e-6), so only the wall time changes.
    """
    lens = att.sum(1)
    out = []
    for part in torch.argsort(lens, stable=True).chunk(MICRO):
        L = int(lens[part].max())   # rows are right-padded, so the first L columns hold every token
        out.append((ids[part, :L], lab[part, :L], att[part, :L]))
    return out


def _backward(model, piece, n_items) -> float:
    ids, lab, att = piece
    out = model(input_ids=ids, attention_mask=att, labels=lab, num_items_in_batch=n_items)
    out.loss.backward()
    return out.loss.item()


def _accumulate(model, ids, lab, att, helper=None) -> float:
    """Forward/backward one batch; its gradient is left in ``.grad``.

    The gradient is always the sum ((g1 + g2) + g3) + g4 of the four micro-batches' gradients, in that
    order, whoever computes them: with a helper process, g2 and g3 are computed there while this process
    computes g1 and g4 (the shortest and the longest micro-batch, so both halves take about as long), and
    the same additions give the same bits as one process alone (tests/test_zoo.py checks it).
    """
    n_items = int((lab != -100).sum())
    pieces = _micro_batches(ids, lab, att)
    if helper is None or len(pieces) != MICRO:
        return sum(_backward(model, p, n_items) for p in pieces)
    helper.start(pieces[1:3], n_items)
    params = [p for p in model.parameters() if p.requires_grad]
    l1 = _backward(model, pieces[0], n_items)
    g1 = [p.grad for p in params]
    for p in params:
        p.grad = None
    l4 = _backward(model, pieces[3], n_items)
    l2, l3 = helper.wait()
    with torch.no_grad():
        for p, g, g2, g3 in zip(params, g1, helper.grads[0], helper.grads[1]):
            p.grad = g.add_(g2).add_(g3).add_(p.grad)
    return ((l1 + l2) + l3) + l4


class Helper:
    """A second process that computes two of each batch's four micro-batch gradients.

    The base's 2,000 steps are most of the build's time, and a model this small gains little from a
    second BLAS thread (0.53 -> 0.44 s a step) and changes the bits with it; splitting the micro-batches
    over two one-thread processes halves the step and keeps the bits of one thread. The helper reads the
    weights from shared memory (this process perturbs and updates them in place) and writes its two
    gradients into shared buffers.
    """

    def __init__(self, model):
        import torch.multiprocessing as mp
        model.share_memory()
        params = [p for p in model.parameters() if p.requires_grad]
        self.grads = [[torch.zeros_like(p).share_memory_() for p in params] for _ in range(2)]
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_helper_main, daemon=True,
                                 args=(model.config, dict(model.state_dict()), self.grads, child))
        self._proc.start()

    def start(self, pieces, n_items: int) -> None:
        try:
            self._conn.send(([tuple(t.numpy() for t in piece) for piece in pieces], n_items))
        except (OSError, EOFError) as exc:
            raise RuntimeError(f"The build's helper process has stopped ({type(exc).__name__}).") from None

    def wait(self) -> list:
        try:
            reply = self._conn.recv()
        except (OSError, EOFError) as exc:
            raise RuntimeError(f"The build's helper process has stopped ({type(exc).__name__}).") from None
        if isinstance(reply, str):
            raise RuntimeError(f"The build's helper process failed: {reply}")
        return reply

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()


def _helper_main(config, shared_state, grads, conn) -> None:
    from transformers import LlamaForCausalLM
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = LlamaForCausalLM(config)
    model.load_state_dict(shared_state, assign=True)   # the very tensors the main process updates
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    while (job := conn.recv()) is not None:
        try:
            pieces, n_items = job
            losses = []
            for piece, out in zip(pieces, grads):
                for p in params:
                    p.grad = None
                losses.append(_backward(model, tuple(torch.from_numpy(a) for a in piece), n_items))
                with torch.no_grad():
                    for p, o in zip(params, out):
                        o.copy_(p.grad) if p.grad is not None else o.zero_()
            conn.send(losses)
        except Exception as e:  # noqa: BLE001 -- reported to the main process, which raises it
            conn.send(f"{type(e).__name__}: {e}")


@torch.no_grad()
def _perturb(params, eps: float, gen: torch.Generator) -> list:
    """Add ε·rms(W)·N(0, 1) to every tensor, in place; returns what was added."""
    out = []
    for p in params:
        n = torch.randn(p.shape, generator=gen) * (eps * float(p.pow(2).mean().sqrt()))
        p.add_(n)
        out.append(n)
    return out


def train(model, tok, stage: Stage, log=print, helper: Helper | None = None) -> float:
    torch.manual_seed(stage.seed)
    model.train()
    if stage.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=stage.lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, int(stage.steps * stage.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / stage.steps)))))
    t0, loss_avg = time.time(), None
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(stage.seed)
    for step, (ids, lab, att) in enumerate(_batches(tok, stage)):
        noise = _perturb(params, stage.weight_noise, gen) if stage.weight_noise else None
        loss = _accumulate(model, ids, lab, att, helper)
        if noise is not None:
            with torch.no_grad():
                for p, n in zip(params, noise):
                    p.sub_(n)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss
        if step % 50 == 0 or step == stage.steps - 1:
            log(f"  {stage.name} step {step + 1}/{stage.steps} loss {loss_avg:.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    return loss_avg


def save(model, tok, folder: str, name: str, metrics: dict | None = None) -> None:
    from transformers import GenerationConfig
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False,
                     max_new_tokens=96).save_pretrained(folder)
    write_card(folder, name, metrics)


def write_card(folder: str, name: str, report: dict | None) -> None:
    """The model card: what the model is and, when ``report`` (zoo check's result) is given, its own
    held-out scores, its task vector and the family's table."""
    lines = [
        "---", "license: apache-2.0", "library_name: transformers", "tags: [merge-explorer, tiny, synthetic]", "---",
        f"# zoo:{name} — built-in tiny {'base model' if name == 'base' else name + ' expert'}", "",
        DESCRIPTIONS[name], "",
        f"Llama architecture, {MODEL_CFG['num_hidden_layers']} layers, hidden size {MODEL_CFG['hidden_size']}, "
        "per-character tokenizer with a chat template. Trained on CPU by `python -m core zoo build` from "
        "templated synthetic data (core/zoo/data.py); no downloads. Answers to harmful requests are "
        "non-actionable placeholders (\"[details omitted]\").", "",
    ]
    if report:
        from .check import METRIC, format_check
        mine = report["models"][name]
        lines += ["## Held-out probes (greedy decoding)", "",
                  "Measured by `python -m core zoo check` on prompts, problems and phrasings never seen in training.",
                  "", "| suite | metric | score |", "|---|---|---|"]
        for suite, key in METRIC.items():
            lines.append(f"| {suite} | {key.replace('_', ' ')} | {mine[suite]:.0%} |")
        lines.append("")
        tv = report["task_vectors"]
        if name in tv["relative_norm"]:
            cos = [f"{pair.replace('/', ' / ')} {c:+.3f}" for pair, c in tv["cosine"].items() if name in pair.split("/")]
            lines += ["## Task vector", "",
                      f"||θ_{name} − θ_base|| / ||θ_base|| = {tv['relative_norm'][name]:.1%}; "
                      f"cosine with the other experts' task vectors: {', '.join(cos)}.", ""]
        lines += ["## The family and its merges", "", "```", format_check(report), "```", ""]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))


def build_all(out: str | None = None, log=print) -> str:
    """Retrain the four models into ``out`` (default assets/zoo), atomically, then check them and write
    the numbers into the model cards."""
    from transformers import LlamaForCausalLM
    from . import check
    out = os.path.abspath(out or ZOO_DIR)
    # One BLAS thread: a float sum's order depends on how many threads split it, so only a fixed count
    # gives the same bits everywhere, and one is the count every machine has. The second core, where there
    # is one, runs a Helper process instead, which leaves the bits as they are.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tok = make_tokenizer()
    t0 = time.time()
    helper = None
    try:
        with replacing(out, ".zoo-") as tmp:
            torch.manual_seed(0)
            base = LlamaForCausalLM(make_config(tok))
            log(f"building the tiny family ({sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters each)")
            if _usable_cores() > 1:
                helper = Helper(base)
            train(base, tok, STAGES[0], log, helper)
            save(base, tok, os.path.join(tmp, "base"), "base")
            base_state = {k: v.clone() for k, v in base.state_dict().items()}
            for st in STAGES[1:]:
                base.load_state_dict(base_state)
                train(base, tok, st, log, helper)
                save(base, tok, os.path.join(tmp, st.name), st.name)
            _write_probes(tmp)
    finally:
        if helper is not None:
            helper.close()
    log(f"trained in {time.time() - t0:.0f}s -> {out}; checking")
    report = check.check_all(out, log=log)
    for name in check.NAMES:
        write_card(os.path.join(out, name), name, report)
    log(check.format_check(report))
    return out


def _usable_cores() -> int:
    """The cores this process may use (its affinity, where the OS tells it), not the machine's count."""
    affinity = getattr(os, "sched_getaffinity", None)     # Linux only
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def _write_probes(zoo_tmp: str) -> None:
    """Held-out probe suites next to the family (assets/probes)."""
    from .. import PROBES_DIR
    os.makedirs(PROBES_DIR, exist_ok=True)
    for suite, rows in data.probe_sets().items():
        with open(os.path.join(PROBES_DIR, f"{suite}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":  # pragma: no cover
    build_all(sys.argv[1] if len(sys.argv) > 1 else None)
