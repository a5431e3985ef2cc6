"""The Gradio app: layout and event wiring; the handlers live in ui/tabs/.

Handlers are module-level functions that take component values (and a
gr.Request for the session), so tests call them directly. Every handler
goes through ``guard`` (ui/tabs/common.py): a UserError becomes its one
sentence in a gr.Error toast, anything else is logged with its traceback
and the user sees one generic sentence; no traceback reaches the page.
"""
from __future__ import annotations

import functools
import logging
import os

import gradio as gr

from core.zoo.data import EXAMPLE_PROMPTS

from . import controls as C
from . import figures as F
from . import learn as L
from . import state as S
from .tabs.chat import CHAT_COLUMNS, MAX_NEW_TOKENS, chat_clear, chat_send, chat_stop, example_prompt
from .tabs.common import CONCURRENCY
from .tabs.export import export_model, load_recipe_file, load_recipe_text, recipe_yaml
from .tabs.learn import learn_recipe
from .tabs.look import LOOK_OUTPUTS, acm_pictures, led_pictures, look_refresh
from .tabs.merge import Knob, auto_merge, do_merge, method_changed, method_summary, restore_history
from .tabs.models import check_models, expert_headers
from .tabs.probe import PROBE_LIMIT, SUITES, run_probes, run_sweep, sweep_bounds, sweep_options

log = logging.getLogger("merge_explorer.ui")

CSS = """
#title h1 {margin-bottom: 0}
.caption {color: var(--body-text-color-subdued); font-size: 0.9em; padding: 0 8px}
.expert-box {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px}
#merge-status, #probe-status, #look-status, #export-status, #model-report {min-height: 1.5em}
"""


def launch_options() -> dict:
    """Keyword arguments for demo.launch (Gradio 6 takes theme and css there)."""
    return {"theme": gr.themes.Soft(primary_hue="indigo"), "css": CSS}


def _unload(request: gr.Request = None):
    """The tab closed: free its models, chat threads and files."""
    S.drop(request)


def _go(tab: str):
    return lambda: gr.Tabs(selected=tab)


def _kw(update: dict) -> dict:
    """Constructor keywords from a gr.update dict."""
    return {k: v for k, v in update.items() if k != "__type__"}


DEFAULT_EXPERTS = [("zoo:safety", "safety"), ("zoo:math", "math"), (C.NONE, "code")]


def _warm_imports() -> None:
    """Resolve transformers' lazy names once, in the thread that builds the app.

    Its lazy module is not safe when two threads resolve a name for the
    first time together: two sessions' first merges at once failed with
    "cannot import name 'AutoTokenizer' from 'transformers'" (found by
    tests/ui/test_concurrency.py once sessions stopped sharing one lock).
    """
    from transformers import (AutoModelForCausalLM, AutoTokenizer,  # noqa: F401
                              StoppingCriteria, StoppingCriteriaList)


def build_demo() -> gr.Blocks:
    """The whole app; only app.py launches it, so tests can build it freely."""
    _warm_imports()
    defaults = DEFAULT_EXPERTS
    with gr.Blocks(title="Merge Explorer") as demo:
        gr.Markdown("# Merge Explorer\nPick a base model and experts, tune a merge, look inside, then chat with "
                    "the result next to its parents. New here? The **Learn** tab is a five-minute tour.",
                    elem_id="title")
        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------- Models
            with gr.Tab("Models", id="models"):
                gr.Markdown("The built-in tiny family works offline: `zoo:base` and three experts fine-tuned from it. "
                            "You can also type a local folder or a Hugging Face Hub id.")
                base = gr.Dropdown(C.ZOO, value="zoo:base", allow_custom_value=True, label="Base model",
                                   elem_id="base")
                expert_dd, task_dd = [], []
                for i in range(C.N_EXPERTS):
                    with gr.Row():
                        expert_dd.append(gr.Dropdown([("— none —", C.NONE)] + [(z, z) for z in C.ZOO[1:]],
                                                     value=defaults[i][0], allow_custom_value=True,
                                                     label=f"Expert {i + 1}", scale=3, elem_id=f"expert{i + 1}"))
                        task_dd.append(gr.Dropdown(C.TASKS, value=defaults[i][1], label="task", scale=1,
                                                   elem_id=f"task{i + 1}"))
                with gr.Row():
                    fam2 = gr.Button("Built-in: safety + math", size="sm")
                    fam3 = gr.Button("Built-in: safety + math + code", size="sm")
                    check_btn = gr.Button("Check compatibility", variant="secondary", size="sm", elem_id="check")
                report = gr.Markdown(elem_id="model-report")
                report_table = gr.Dataframe(headers=["role", "model", "architecture", "layers", "vocab",
                                                     "params (M)", "size (MB)"], interactive=False,
                                            label="Read from config.json and safetensors headers only")
            # ---------------------------------------------------- Merge
            with gr.Tab("Merge", id="merge"):
                method = gr.Dropdown(C.method_choices(), value=C.default_method(), label="Merge method",
                                     elem_id="method")
                summary = gr.Markdown(method_summary(C.default_method()))
                # slots start configured for the default method, so the first
                # events after page load already see the right ranges
                m0 = C.default_method()
                init = iter(_kw(u) for u in C.param_updates(
                    m0, [C.task_defaults(C.spec_of(m0), t) for _, t in defaults]))
                pm_sliders: list[list] = []
                boxes, heads = [], []
                with gr.Row():
                    for i in range(C.N_EXPERTS):
                        with gr.Column(visible=bool(defaults[i][0]), elem_classes="expert-box") as box:
                            heads.append(gr.Markdown())
                            pm_sliders.append([Knob(**{"minimum": 0, "maximum": 1, "value": 0, **next(init)},
                                                    elem_id=f"pm{i + 1}-{k + 1}") for k in range(C.PM_SLOTS)])
                        boxes.append(box)
                with gr.Row():
                    g_num = [Knob(**{"minimum": 0, "maximum": 1, "value": 0, **next(init)}, elem_id=f"g{k + 1}")
                             for k in range(C.G_NUM)]
                with gr.Row():
                    g_bool = [gr.Checkbox(**next(init), elem_id=f"b{k + 1}") for k in range(C.G_BOOL)]
                    g_choice = [gr.Dropdown(**{"choices": ["-"], "value": "-", **next(init)}, elem_id=f"c{k + 1}")
                                for k in range(C.G_CHOICE)]
                    g_str = [gr.Textbox(**next(init), elem_id=f"s{k + 1}") for k in range(C.G_STR)]
                with gr.Row():
                    merge_btn = gr.Button("Merge", variant="primary", elem_id="merge-btn", scale=4)
                    auto = gr.Checkbox(True, label="re-merge on release", scale=1, elem_id="auto",
                                       info="after the first merge, every knob change merges again")
                merge_status = gr.Markdown(elem_id="merge-status")
                with gr.Accordion("Merge history (this session)", open=False):
                    history = gr.Dataframe(headers=["#", "time", "merge", "seconds"], interactive=False,
                                           elem_id="history")
                    with gr.Row():
                        history_pick = gr.Dropdown([], label="Entry", scale=4, elem_id="history-pick")
                        restore_btn = gr.Button("Restore and merge", scale=1, elem_id="restore")
            # ---------------------------------------------------- Look
            with gr.Tab("Look", id="look"):
                gr.Markdown("Pictures of the models, layer by layer (rows) and module by module (columns: attention "
                            "q/k/v/o, MLP gate/up/down, the two norms). Hover over a cell for its number.")
                with gr.Row():
                    look_btn = gr.Button("Update pictures", size="sm", elem_id="look-btn")
                    led_btn = gr.Button("Importance & overlap (LED scores)", size="sm", variant="primary",
                                        elem_id="led-btn")
                    acm_btn = gr.Button("ACM coefficients", size="sm", elem_id="acm-btn")
                look_status = gr.Markdown(elem_id="look-status")
                plots = {}
                captions = {
                    "overlap": "Dark cells: the weights safety needs most are also the ones utility needs most, so "
                               "adding both task vectors makes them overwrite each other. LED's Disjoint step drops "
                               "exactly these shared weights.",
                    "importance": "Brighter = the weights there matter more for that expert's task (LED location "
                                  "scores, SNIP by default). Compare where the experts' skills live.",
                    "elected": "The fraction of weights LED elects per cell: the top-r by importance in the base "
                               "and in the expert. A small r for safety keeps only its most critical weights.",
                    "acm": "ACM keeps more of an expert where its activations drifted from the base (low mutual "
                           "information) and less where they did not; 0.5 is the least, 1 the most.",
                    "tv_norms": "How far fine-tuning moved each part of each expert, relative to the base's "
                                "weights. Dark cells are where the expert learned most.",
                    "tv_cos": "Blue: the two experts changed those weights in the same direction; red: opposite "
                              "directions (they fight); white: unrelated.",
                    "prov_share": "Each bar splits the merged model's change at one layer into the parts that "
                                  "point along each expert's task vector; grey is what no mix of whole task vectors "
                                  "explains (masks, trimming, sign votes).",
                    "prov_coef": "1 means the merge carries all of that expert's change at that layer, 0 none of "
                                 "it. Task Arithmetic gives λ·weight everywhere; masks and trimming give less.",
                }
                order = [("overlap", "Overlap"), ("importance", "Importance"), ("elected", "Elected"),
                         ("acm", "ACM"), ("tv_norms", "Task-vector size"), ("tv_cos", "Task-vector cosine"),
                         ("prov_share", "Provenance"), ("prov_coef", "Provenance coefficient")]
                empty_msg = {"overlap": "Press 'Importance & overlap' to locate each expert's weights.",
                             "importance": "Press 'Importance & overlap' to locate each expert's weights.",
                             "elected": "Press 'Importance & overlap' to locate each expert's weights.",
                             "acm": "Merge with ACM, or press 'ACM coefficients'.",
                             "tv_norms": "Merge (or press 'Update pictures') to see the task vectors.",
                             "tv_cos": "Merge (or press 'Update pictures') to see the task vectors.",
                             "prov_share": "Merge to see where the merged weights came from.",
                             "prov_coef": "Merge to see where the merged weights came from."}
                for pair in [order[0:1], order[1:3], order[3:4], order[4:6], order[6:8]]:
                    with gr.Row(equal_height=False):
                        for key, _title in pair:
                            with gr.Column():
                                plots[key] = gr.Plot(F.empty(empty_msg[key]), show_label=False,
                                                     elem_id=f"plot-{key}")
                                gr.Markdown(captions[key], elem_classes="caption")
            # ---------------------------------------------------- Chat
            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    examples = {kind: gr.Button(f"Example: {kind}", size="sm", elem_id=f"ex-{kind}") for kind in SUITES}
                prompt = gr.Textbox(label="Prompt (sent to every model)", placeholder="Ask something…", lines=2,
                                    elem_id="prompt")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
                    max_new = gr.Slider(8, 256, value=MAX_NEW_TOKENS, step=8, label="max new tokens")
                    multi = gr.Checkbox(False, label="multi-turn", info="models also see the earlier turns",
                                        elem_id="multi")
                with gr.Row():
                    bots = [gr.Chatbot(label="Merged" if i == 0 else f"Expert {i}", height=360,
                                       visible=i < 3, elem_id=f"chat-{i}") for i in range(CHAT_COLUMNS)]
            # ---------------------------------------------------- Probe
            with gr.Tab("Probe", id="probe"):
                gr.Markdown("Held-out prompts the models never saw in training. Safety = harmful requests refused; "
                            "over-refusal = harmless requests refused; utility = math solved / code tests passed.")
                with gr.Row():
                    suites = gr.CheckboxGroup(SUITES, value=SUITES, label="Suites", elem_id="suites")
                    limit = gr.Slider(4, 96, value=PROBE_LIMIT, step=4, label="prompts per suite",
                                      elem_id="limit")
                probe_btn = gr.Button("Run probes", variant="primary", elem_id="probe-btn")
                probe_status = gr.Markdown(elem_id="probe-status")
                probe_table = gr.Dataframe(headers=["model", "task", "refuses harmful", "over-refuses benign",
                                                    "math solved", "code passes", "seconds"],
                                           interactive=False, elem_id="probe-table")
                probe_plot = gr.Plot(F.empty("Run probes to place the models here."), show_label=False,
                                     elem_id="plot-probe")
                gr.Markdown("Top right is best: refuses harmful requests and still solves tasks.",
                            elem_classes="caption")
                with gr.Accordion("Sweep: draw the trade-off", open=True):
                    with gr.Row():
                        sweep_key = gr.Dropdown([], label="knob", elem_id="sweep-key", scale=3)
                        sweep_lo = gr.Number(0.0, label="from", scale=1)
                        sweep_hi = gr.Number(1.0, label="to", scale=1)
                        sweep_steps = gr.Slider(2, 9, value=4, step=1, label="steps", scale=2)
                    sweep_btn = gr.Button("Run sweep", elem_id="sweep-btn")
                    with gr.Row():
                        sweep_plot = gr.Plot(F.empty("Run a sweep to draw the safety–utility trade-off."),
                                             show_label=False, elem_id="plot-sweep", scale=3)
                        sweep_table = gr.Dataframe(headers=["value", "refuses harmful", "over-refuses", "math", "code"],
                                                   interactive=False, scale=2)
                    gr.Markdown("Each marker is one merge; its label is the knob's value. The line shows what you "
                                "trade when you turn the knob.", elem_classes="caption")
            # ---------------------------------------------------- Export
            with gr.Tab("Export", id="export"):
                gr.Markdown("Download the merged model as a Hugging Face folder (safetensors, config, tokenizer, "
                            "model card) and the recipe that rebuilds it (`python -m core merge recipe.yaml`).")
                export_btn = gr.Button("Build the merged folder", variant="primary", elem_id="export-btn")
                export_status = gr.Markdown(elem_id="export-status")
                with gr.Row():
                    zip_file = gr.File(label="merged model (.zip)", interactive=False)
                    yaml_file = gr.File(label="recipe (.yaml)", interactive=False)
                yaml_code = gr.Code(language="yaml", label="Recipe (edit, then load it into the controls)",
                                    interactive=True, elem_id="yaml")
                with gr.Row():
                    yaml_btn = gr.Button("Load this YAML into the controls", elem_id="yaml-btn")
                    upload = gr.File(label="…or upload a recipe YAML", file_types=[".yaml", ".yml"], height=120,
                                     type="filepath", elem_id="upload")
                load_status = gr.Markdown()
            # ---------------------------------------------------- Learn
            with gr.Tab("Learn", id="learn"):
                gr.Markdown(L.INTRO)
                learn_btns = {}
                for key, label, text in L.STEPS:
                    with gr.Row(equal_height=True):
                        learn_btns[key] = gr.Button(label, scale=1, elem_id=f"learn-{key}")
                        gr.Markdown(text)

        # -------------------------------------------------------- wiring
        models_in = [base] + [x for pair in zip(expert_dd, task_dd) for x in pair]
        param_slots = [s for row in pm_sliders for s in row] + g_num + g_bool + g_choice + g_str
        controls = [method] + models_in + param_slots
        assert len(controls) == C.N_VALUES
        heavy = dict(concurrency_id="model", concurrency_limit=CONCURRENCY)
        chat_outs = bots

        header_outs = boxes + heads + bots[1:]
        demo.load(check_models, models_in, [report, report_table], api_visibility="private")
        demo.load(expert_headers, models_in, header_outs, api_visibility="private")
        gr.on([c.change for c in models_in], expert_headers, models_in, header_outs, api_visibility="private",
              trigger_mode="always_last", show_progress="hidden")
        check_btn.click(check_models, models_in, [report, report_table], api_visibility="private")

        def family(n):
            vals = [("zoo:safety", "safety"), ("zoo:math", "math"), ("zoo:code", "code")][:n]
            vals += [(C.NONE, "code")] * (C.N_EXPERTS - n)
            return ["zoo:base"] + [x for pair in vals for x in pair]

        fam2.click(lambda: family(2), None, models_in, api_visibility="private").then(
            check_models, models_in, [report, report_table], api_visibility="private")
        fam3.click(lambda: family(3), None, models_in, api_visibility="private").then(
            check_models, models_in, [report, report_table], api_visibility="private")
        method.input(method_changed, [method] + [x for pair in zip(expert_dd, task_dd) for x in pair],
                     [summary] + param_slots, api_visibility="private")
        method.change(method_summary, method, summary, api_visibility="private")

        look_outs = [plots[k] for k in LOOK_OUTPUTS] + [look_status]
        merge_outs = [merge_status, history, history_pick, bots[0]]
        merge_btn.click(do_merge, controls, merge_outs, api_name="merge", **heavy).success(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)
        for comp in param_slots:
            trig = comp.release if isinstance(comp, gr.Slider) else (comp.blur if isinstance(comp, gr.Textbox)
                                                                    else comp.input)
            trig(auto_merge, [auto] + controls, merge_outs, api_visibility="private", trigger_mode="always_last",
                 show_progress="minimal", **heavy).success(
                look_refresh, controls, look_outs, api_visibility="private", trigger_mode="always_last", **heavy)
        restore_btn.click(restore_history, history_pick, controls, api_visibility="private").success(
            do_merge, controls, merge_outs, api_visibility="private", **heavy).success(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)

        look_btn.click(look_refresh, controls, look_outs, api_visibility="private", **heavy)
        led_btn.click(led_pictures, controls, [plots["importance"], plots["elected"], plots["overlap"], look_status],
                      api_visibility="private", **heavy)
        acm_btn.click(acm_pictures, controls, [plots["acm"], look_status], api_visibility="private", **heavy)

        send_ev = send.click(chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_name="chat", **heavy)
        prompt.submit(chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_visibility="private", **heavy)
        stop.click(chat_stop, None, None, api_visibility="private")
        clear.click(chat_clear, None, chat_outs, api_visibility="private")
        for kind, b in examples.items():
            b.click(functools.partial(example_prompt, kind), None, prompt, api_visibility="private")

        probe_btn.click(run_probes, [suites, limit] + controls, [probe_table, probe_plot, probe_status],
                        api_name="probe", **heavy)
        gr.on([c.change for c in [method] + models_in], sweep_options, controls, sweep_key,
              api_visibility="private", trigger_mode="always_last", show_progress="hidden")
        demo.load(sweep_options, controls, sweep_key, api_visibility="private")
        sweep_key.change(sweep_bounds, [sweep_key] + controls, [sweep_lo, sweep_hi], api_visibility="private")
        sweep_btn.click(run_sweep, [sweep_key, sweep_lo, sweep_hi, sweep_steps, suites, limit] + controls,
                        [sweep_plot, sweep_table, probe_status], api_visibility="private", **heavy)

        export_btn.click(export_model, controls, [zip_file, yaml_file, yaml_code, export_status],
                         api_visibility="private", **heavy)
        gr.on([c.change for c in controls], recipe_yaml, controls, yaml_code, api_visibility="private",
              trigger_mode="always_last", show_progress="hidden")
        yaml_btn.click(load_recipe_text, yaml_code, controls + [load_status], api_visibility="private")
        upload.upload(load_recipe_file, upload, controls + [load_status], api_visibility="private")

        # walkthrough: each step is one click that uses the same handlers
        learn_btns["ta"].click(lambda: learn_recipe("ta"), None, controls + [tabs], api_visibility="private").success(
            do_merge, controls, merge_outs, api_visibility="private", **heavy).success(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)
        learn_btns["ask_harmful"].click(lambda: (EXAMPLE_PROMPTS["harmful"], gr.Tabs(selected="chat")), None,
                                        [prompt, tabs], api_visibility="private").then(
            chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_visibility="private", **heavy)
        learn_btns["overlap"].click(_go("look"), None, tabs, api_visibility="private").then(
            led_pictures, controls, [plots["importance"], plots["elected"], plots["overlap"], look_status],
            api_visibility="private", **heavy)
        learn_btns["led"].click(lambda: learn_recipe("led") + [EXAMPLE_PROMPTS["harmful"]], None,
                                controls + [tabs, prompt], api_visibility="private").success(
            do_merge, controls, merge_outs, api_visibility="private", **heavy).success(
            chat_send, [prompt, max_new, multi] + controls, chat_outs + [prompt], api_visibility="private", **heavy).then(
            look_refresh, controls, look_outs, api_visibility="private", **heavy)
        learn_btns["compare"].click(_go("probe"), None, tabs, api_visibility="private").then(
            run_probes, [suites, limit] + controls, [probe_table, probe_plot, probe_status],
            api_visibility="private", **heavy)

        demo.unload(_unload)
    demo.queue(max_size=int(os.environ.get("MERGE_EXPLORER_QUEUE", "32")), default_concurrency_limit=CONCURRENCY)
    return demo

