"""The Export tab: the merged folder, the recipe YAML, loading a recipe."""
from __future__ import annotations

import os
import shutil
import time

import gradio as gr

from core import service
from core import recipe as R
from core.errors import UserError

from .. import controls as C
from .. import state as S
from .common import _progress, _sentence, _values, guard


# ------------------------------------------------------------------ export
@guard
def export_model(*args, progress=gr.Progress(), request: gr.Request = None):
    """Write the merged folder (safetensors, config, tokenizer, card), zip it, and the recipe YAML."""
    values = _values(args)
    recipe = C.recipe_from_values(values)
    plan = service.plan(recipe)
    sess = S.get(request)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(sess.tmpdir(), f"merged-{recipe['merge_method']}-{stamp}")
    res = service.merge(plan, out_dir=folder, progress=_progress(progress), force=True)
    archive = shutil.make_archive(folder, "zip", root_dir=folder)
    yaml_text = plan.recipe.to_yaml()
    ypath = os.path.join(sess.tmpdir(), f"recipe-{recipe['merge_method']}-{stamp}.yaml")
    with open(ypath, "w", encoding="utf-8") as f:
        f.write(yaml_text)
    mb = os.path.getsize(archive) / 2**20
    return archive, ypath, yaml_text, f"✓ Wrote {res.n_tensors} tensors in {res.seconds:.2f} s; the zip is {mb:.1f} MB."


def recipe_yaml(*args):
    """The recipe the controls describe, as YAML (shown live on the Export tab).

    Runs on every control change, so a half-filled form (no expert yet) is
    a comment in the box, not an error toast.
    """
    try:
        return R.from_dict(C.recipe_from_values(_values(args))).to_yaml()
    except Exception as exc:
        return f"# {_sentence(exc)}\n"


@guard
def load_recipe_text(text):
    """Restore every control from a recipe YAML (pasted or uploaded)."""
    if not (text or "").strip():
        raise UserError("Paste or upload a recipe YAML first.")
    rec = R.loads(text)
    ups = C.values_from_recipe(rec.to_dict())
    return ups + [f"✓ Loaded a {rec.merge_method} recipe with {len(rec.models)} models; press Merge to build it."]


@guard
def load_recipe_file(path):
    if not path:
        raise UserError("Upload a recipe YAML first.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        raise UserError("The uploaded recipe could not be read as UTF-8 text.")
    return load_recipe_text(text)


