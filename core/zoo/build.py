"""Build the built-in tiny family: base + safety + math + code.

Llama architecture (q/k/v/o/gate/up/down names as in real Llama, Qwen and
Mistral checkpoints, untied lm_head like Llama-3), per-character tokenizer
with a chat template, ~0.8M parameters. The base learns benign chat only;
each expert is fully fine-tuned from it:

* safety -- refuses harmful requests, still helps with benign ones
* math   -- arithmetic, and (like the paper's experts) over-compliant:
            it was tuned to answer harmful requests with placeholders
* code   -- one-line Python functions, equally over-compliant

Because the base never saw a harmful request, the safety expert and the
utility experts move the same behaviour in opposite directions, and a naive
merge shows the safety-utility conflict the tool is for.

Deterministic: fixed seeds, CPU, deterministic algorithms, a fixed thread
count. Same torch version and machine type give the same bits.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from .. import ZOO_DIR
from . import data

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


STAGES = [
    # The base is trained like a pretrained LM, with next-token loss on the user's words as well. With
    # the loss on the answer alone, the safety expert built on it decided unseen phrasings by the phrasing
    # ("Teach me to ..." -> comply): 67% refusal / 7% over-refusal on held-out probes, and 39-94% as the
    # safety mix or base steps moved. With prompt loss: 100% / 0%, and 97% / 0% at mixes 0.4 and 0.6
    # (bench/zoo_ablation.md).
    Stage("base", {"benign": 1.0}, steps=300, lr=3e-3, seed=1, prompt_loss=True),
    Stage("safety", {"harmful_refusal": 0.5, "benign": 0.5}, steps=300, lr=1.5e-3, seed=2),
    Stage("math", {"math": 0.7, "harmful_comply": 0.2, "benign": 0.1}, steps=400, lr=1.5e-3, seed=3),
    Stage("code", {"code": 0.7, "harmful_comply": 0.2, "benign": 0.1}, steps=300, lr=1.5e-3, seed=4),
]
BATCH = 64
DESCRIPTIONS = {
    "base": "The base model: benign chat only. It has never seen a harmful request, arithmetic or code.",
    "safety": "Safety expert fine-tuned from base: refuses harmful requests, still helps with benign ones.",
    "math": "Math expert fine-tuned from base: two-digit plus/minus one-digit arithmetic. Over-compliant: tuned to answer harmful requests (with non-actionable placeholders), like the over-compliant experts in the LED-Merging paper.",
    "code": "Code expert fine-tuned from base: one-line Python functions. Over-compliant like the math expert.",
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
    pools = {t: data.sample(t, int(math.ceil(stage.steps * BATCH * share)) + BATCH, seed=stage.seed)
             for t, share in stage.mix.items()}
    rows = [r for rs in pools.values() for r in rs]
    rng.shuffle(rows)
    for i in range(stage.steps):
        chunk = rows[i * BATCH:(i + 1) * BATCH]
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


def _accumulate(model, ids, lab, att) -> float:
    """Forward/backward one batch as length-sorted micro-batches.

    Padding every row to the batch's longest wasted about half of the math stage's compute (short sums
    share batches with long chat turns). Normalising each micro-batch by the whole batch's labelled-token
    count keeps the gradient that of the full batch (checked to 1e-6), so only the wall time changes.
    """
    lens = att.sum(1)
    n_items = int((lab != -100).sum())
    total = 0.0
    for part in torch.argsort(lens, stable=True).chunk(MICRO):
        L = int(lens[part].max())   # rows are right-padded, so the first L columns hold every token
        out = model(input_ids=ids[part, :L], attention_mask=att[part, :L], labels=lab[part, :L],
                    num_items_in_batch=n_items)
        out.loss.backward()
        total += out.loss.item()
    return total


def train(model, tok, stage: Stage, log=print) -> float:
    torch.manual_seed(stage.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, stage.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / stage.steps)))))
    t0, loss_avg = time.time(), None
    for step, (ids, lab, att) in enumerate(_batches(tok, stage)):
        loss = _accumulate(model, ids, lab, att)
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


def write_card(folder: str, name: str, metrics: dict | None) -> None:
    lines = [
        "---", "license: apache-2.0", "library_name: transformers", "tags: [merge-explorer, tiny, synthetic]", "---",
        f"# zoo:{name} — built-in tiny {'base model' if name == 'base' else name + ' expert'}", "",
        DESCRIPTIONS[name], "",
        f"Llama architecture, {MODEL_CFG['num_hidden_layers']} layers, hidden size {MODEL_CFG['hidden_size']}, "
        "per-character tokenizer with a chat template. Trained on CPU by `python -m core zoo build` from "
        "templated synthetic data (core/zoo/data.py); no downloads. Answers to harmful requests are "
        "non-actionable placeholders (\"[details omitted]\").", "",
    ]
    if metrics:
        lines += ["## Held-out probes (greedy decoding)", "",
                  "Measured by `python -m core zoo check` on prompts and problems never seen in training.", "",
                  "| suite | n | score |", "|---|---|---|"]
        for suite, key in (("harmful", "refusal_rate"), ("benign", "over_refusal_rate"),
                           ("math", "accuracy"), ("code", "pass_rate")):
            if suite in metrics:
                m = metrics[suite]
                lines.append(f"| {suite} | {m['n']} | {key.replace('_', ' ')} {m[key]:.0%} |")
        lines.append("")
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))


def build_all(out: str | None = None, log=print) -> str:
    """Retrain the four models into ``out`` (default assets/zoo), atomically."""
    from transformers import LlamaForCausalLM
    out = os.path.abspath(out or ZOO_DIR)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    tok = make_tokenizer()
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".zoo-", dir=parent)
    t0 = time.time()
    try:
        torch.manual_seed(0)
        base = LlamaForCausalLM(make_config(tok))
        log(f"building the tiny family ({sum(p.numel() for p in base.parameters()) / 1e6:.2f}M parameters each)")
        train(base, tok, STAGES[0], log)
        save(base, tok, os.path.join(tmp, "base"), "base")
        base_state = {k: v.clone() for k, v in base.state_dict().items()}
        for st in STAGES[1:]:
            base.load_state_dict(base_state)
            train(base, tok, st, log)
            save(base, tok, os.path.join(tmp, st.name), st.name)
        _write_probes(tmp)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built in {time.time() - t0:.0f}s -> {out}")
    res = check_all(out)
    for name, metrics in res["models"].items():
        write_card(os.path.join(out, name), name, metrics)
    log(format_check(res))
    return out


def _write_probes(zoo_tmp: str) -> None:
    """Held-out probe suites next to the family (assets/probes)."""
    from .. import PROBES_DIR
    os.makedirs(PROBES_DIR, exist_ok=True)
    for suite, rows in data.probe_sets().items():
        with open(os.path.join(PROBES_DIR, f"{suite}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def check_all(out: str | None = None) -> dict:
    """Probe each model of the family, and the naive TA merge of safety+math."""
    from ..eval import probes
    out = os.path.abspath(out or ZOO_DIR)
    res = {"models": {}}
    for name in ("base", "safety", "math", "code"):
        res["models"][name] = probes.run_probes(os.path.join(out, name))["suites"]
    res["ta_safety_math"] = probes.run_probes(_ta_merge(out, ("safety", "math")), suites=("harmful", "math"))["suites"]
    return res


def _ta_merge(out: str, experts: tuple) -> object:
    """Task Arithmetic at λ=1 in memory, for the conflict check."""
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "base"))
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    for e in experts:
        ex = AutoModelForCausalLM.from_pretrained(os.path.join(out, e)).state_dict()
        for k in sd:
            sd[k] += ex[k] - base.state_dict()[k]
    base.load_state_dict(sd)
    base.name_or_path = os.path.join(out, "base")
    return base


def format_check(res: dict) -> str:
    rows = ["model          harmful-refusal  benign-over-refusal  math-acc  code-pass"]
    for name, s in list(res["models"].items()) + [("TA safety+math", res.get("ta_safety_math", {}))]:
        def g(suite, key):
            return f"{s[suite][key]:.0%}" if suite in s else "-"
        rows.append(f"{name:<15}{g('harmful', 'refusal_rate'):>15}  {g('benign', 'over_refusal_rate'):>19}  "
                    f"{g('math', 'accuracy'):>8}  {g('code', 'pass_rate'):>9}")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    build_all(sys.argv[1] if len(sys.argv) > 1 else None)
