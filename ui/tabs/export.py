"""The Export tab: the merged folder, the recipe YAML, loading a recipe."""
from __future__ import annotations

import os
import shutil
import time

import gradio as gr

from core import service
from core.errors import UserError

from .. import controls as C
from .. import state as S
from ..common import Named, progress_bar, sentence, guard


def yaml_of(recipe: dict) -> str:
    """The one recipe format: what Export writes, the live box shows and the README documents."""
    return service.recipe_yaml(recipe)


@guard
def export_model(v: dict, progress=gr.Progress(), request=None) -> dict:
    """Write the merge the live model holds (safetensors, config, tokenizer, card), zip it, and its recipe YAML."""
    sess = S.get(request)
    recipe = sess.merged_recipe
    if recipe is None:
        raise UserError(sess.needs_merge("Merge first (Merge tab); Export writes the merge you chat with and probe."))
    plan = service.plan(recipe)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(sess.tmpdir(), f"merged-{recipe['merge_method']}-{stamp}")
    t0 = time.perf_counter()
    name = os.path.basename(folder)
    res = service.merge(plan, out_dir=folder, progress=progress_bar(progress), force=True, handoff_folder=f"./{name}")
    archive = shutil.make_archive(folder, "zip", root_dir=folder)
    yaml_text = yaml_of(recipe)
    ypath = os.path.join(sess.tmpdir(), f"recipe-{recipe['merge_method']}-{stamp}.yaml")
    with open(ypath, "w", encoding="utf-8") as f:
        f.write(yaml_text)
    mb = os.path.getsize(archive) / 2**20
    status = (f"✓ Wrote {res.n_tensors} tensors in {time.perf_counter() - t0:.2f} s; the zip is {mb:.1f} MB.")
    h = res.handoff
    # the quick probes hand over to the full benchmarks: the command runs on the unzipped folder as it is
    handoff = (f"\n\nFull benchmarks ({', '.join(h.tasks)}) with lm-evaluation-harness, after "
               f"`unzip {name}.zip -d {name}`:\n```bash\n{h.hf}\n# on a GPU box, with vLLM:\n{h.vllm}\n```"
               + (f"\n{h.note}." if h.note else "") + " The model card has them too.")
    try:
        if C.recipe_from_values(v) != recipe:
            status += " (The controls have changed since that merge; merge again to export them.)"
    except UserError:
        pass
    return {"zip_file": archive, "yaml_file": ypath, "yaml": yaml_text, "export_status": status + handoff}


def recipe_yaml(v: dict, request=None) -> dict:
    """The recipe the controls describe, as YAML (shown live on the Export tab).

    Runs on every control change, so a half-filled form (no expert yet) is
    a comment in the box, not an error toast.
    """
    try:
        return {"yaml": yaml_of(C.recipe_from_values(v))}
    except Exception as exc:
        return {"yaml": f"# {sentence(exc)}\n"}


@guard
def load_recipe_text(v: dict, request=None) -> dict:
    """Restore the controls from a recipe YAML (pasted or uploaded)."""
    text = v.get("yaml")
    if not (text or "").strip():
        raise UserError("Paste or upload a recipe YAML first.")
    try:
        rec = service.parse_recipe(text)
        out = C.values_from_recipe(rec.to_dict())
    except UserError as exc:
        # said in the status line itself, which would otherwise go on reading "✓ Loaded ..." from before
        return {"load_status": f"✗ Not loaded: {exc}"}
    out["load_status"] = (f"✓ Loaded the recipe: {C.spec_of(rec.merge_method).label}, {len(rec.models)} models; "
                          "press Merge to build it.")
    return out


@guard
def load_recipe_file(v: dict, request=None) -> dict:
    path = v.get("upload")
    if not path:
        raise UserError("Upload a recipe YAML first.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        raise UserError("The uploaded recipe could not be read as UTF-8 text.")
    return load_recipe_text({"yaml": text})


def layout(ui: Named) -> None:
    with gr.Tab("Export", id="export"):
        gr.Markdown("Download the merged model as a Hugging Face folder (safetensors, config, tokenizer, "
                    "model card) and the recipe that rebuilds it (`python -m core merge recipe.yaml`).")
        ui.add("export_btn", gr.Button("Build the merged folder", variant="primary", elem_id="export-btn"))
        ui.add("export_status", gr.Markdown(elem_id="export-status"))
        with gr.Row():
            ui.add("zip_file", gr.File(label="merged model (.zip)", interactive=False))
            ui.add("yaml_file", gr.File(label="recipe (.yaml)", interactive=False))
        ui.add("yaml", gr.Code(language="yaml", label="Recipe (edit, then load it into the controls)",
                               interactive=True, elem_id="yaml"))
        with gr.Row():
            ui.add("yaml_btn", gr.Button("Load this YAML into the controls", elem_id="yaml-btn"))
            ui.add("upload", gr.File(label="…or upload a recipe YAML", file_types=[".yaml", ".yml"], height=120,
                                     type="filepath", elem_id="upload"))
        ui.add("load_status", gr.Markdown(elem_id="load-status"))


def wire(ui: Named, demo) -> None:
    controls = ui.controls()
    ui.on(ui["export_btn"].click, export_model, controls, ["zip_file", "yaml_file", "yaml", "export_status"],
          **ui.heavy)
    ui.on([demo.load] + [ui[k].change for k in controls if "." not in k], recipe_yaml, controls, ["yaml"],
          trigger_mode="always_last", show_progress="hidden")
    for name in C.methods():     # a knob's change sends only its method's controls
        mine = ui.method_controls(name)
        ui.on([ui[k].change for k in mine if "." in k], recipe_yaml, mine, ["yaml"], trigger_mode="always_last",
              show_progress="hidden")
    ui.on(ui["yaml_btn"].click, load_recipe_text, ["yaml"], controls + ["load_status"])
    ui.on(ui["upload"].upload, load_recipe_file, ["upload"], controls + ["load_status"])
