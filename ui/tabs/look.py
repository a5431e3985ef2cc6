"""The Look tab: per-layer pictures of the models and the merge (drawn by ui/pictures.py)."""
from __future__ import annotations

import gradio as gr


from .. import figures as F
from .. import state as S
from ..common import Named, guard
from ..pictures import LOOK_OUTPUTS, acm_pictures, led_pictures, look_opened, look_refresh


def tab_selected(evt: gr.SelectData, request: gr.Request = None) -> None:
    S.get(request).look_open = evt.value == "Look"


@guard
def look_update(v: dict, request=None) -> dict:
    """The 'Update pictures' button: every picture drawn again, changed or not (it also undoes a zoom or
    a hidden legend entry, and repairs a picture a lost response left behind)."""
    S.get(request).drawn.clear()
    return look_refresh(v, request=request)


CAPTIONS = {
    "overlap": "Dark cells: the weights safety needs most are also the ones utility needs most, so "
               "adding both task vectors makes them overwrite each other. LED's Disjoint step drops "
               "exactly these shared weights.",
    "importance": "Brighter = the weights there matter more for that expert's task (LED location "
                  "scores, SNIP by default). Compare where the experts' skills live.",
    "elected": "The fraction of weights LED elects per cell: the top-r by importance in the base "
               "and in the expert. A small r for safety keeps only its most critical weights.",
    "acm": "Solid: ACM's coefficient λ per layer, high where an expert's activations drifted from the base (low "
           "mutual information); 0.5 is the least, 1 the most. Dotted: what the merge adds, λ/N of each task "
           "vector (ACM averages the N experts), the number the provenance chart shows as 'fraction kept'.",
    "tv_norms": "How far fine-tuning moved each part of each expert, relative to the base's "
                "weights. Dark cells are where the expert learned most.",
    "tv_cos": "Purple: the two experts changed those weights in the same direction; orange: opposite "
              "directions (they fight); white: unrelated. Its own scale: these colours never mean an expert.",
    "prov_share": "Each bar splits the merged model's change at one layer into the parts that "
                  "point along each expert's task vector; grey is what no mix of whole task vectors "
                  "explains (masks, trimming, sign votes). Where two task vectors point partly the same way "
                  "the exact split can fall below 0 or above 100%; the bar then shows that part as 0 and "
                  "rescales the rest to 100% (hover shows the exact split).",
    "prov_coef": "1 means the merge carries all of that expert's change at that layer, 0 none of "
                 "it. Task Arithmetic gives λ·weight everywhere (above 1 when λ·weight > 1), ACM λ/N, masks "
                 "and trimming less. Below 0 or above λ·weight: the fit trades two overlapping experts against "
                 "each other there.",
}
ORDER = [("overlap", "Overlap"), ("importance", "Importance"), ("elected", "Elected"),
         ("acm", "ACM"), ("tv_norms", "Task-vector size"), ("tv_cos", "Task-vector cosine"),
         ("prov_share", "Provenance"), ("prov_coef", "Provenance coefficient")]
EMPTY = {"overlap": "Press 'Importance & overlap' to locate each expert's weights.",
         "importance": "Press 'Importance & overlap' to locate each expert's weights.",
         "elected": "Press 'Importance & overlap' to locate each expert's weights.",
         "acm": "Merge with ACM, or press 'ACM coefficients'.",
         "tv_norms": "Merge (or press 'Update pictures') to see the task vectors.",
         "tv_cos": "Merge (or press 'Update pictures') to see the task vectors.",
         "prov_share": "Merge to see where the merged weights came from.",
         "prov_coef": "Merge to see where the merged weights came from."}


def layout(ui: Named) -> None:
    with gr.Tab("Look", id="look"):
        gr.Markdown("Pictures of the models, layer by layer (rows) and module by module (columns: attention "
                    "q/k/v/o, MLP gate/up/down, the two norms). Hover over a cell for its number.")
        with gr.Row():
            ui.add("look_btn", gr.Button("Update pictures", size="sm", elem_id="look-btn"))
            ui.add("led_btn", gr.Button("Importance & overlap (LED scores)", size="sm", variant="primary",
                                        elem_id="led-btn"))
            ui.add("acm_btn", gr.Button("ACM coefficients", size="sm", elem_id="acm-btn"))
        ui.add("look_status", gr.Markdown(elem_id="look-status"))
        for pair in [ORDER[0:1], ORDER[1:3], ORDER[3:4], ORDER[4:6], ORDER[6:8]]:
            with gr.Row(equal_height=False):
                for key, _title in pair:
                    with gr.Column():
                        ui.add(key, gr.Plot(F.empty(EMPTY[key]), show_label=False, elem_id=f"plot-{key}"))
                        gr.Markdown(CAPTIONS[key], elem_classes="caption")


def wire(ui: Named, demo) -> None:
    controls = ui.controls()
    ui.on(ui["look_btn"].click, look_update, controls, LOOK_OUTPUTS + ["look_status"], **ui.heavy)
    seen = ui["tabs"].select(tab_selected, None, None, api_visibility="private", queue=False)
    ui.on(seen.then, look_opened, controls, LOOK_OUTPUTS + ["look_status"], **ui.heavy)
    ui.on(ui["led_btn"].click, led_pictures, controls, ["importance", "elected", "overlap", "look_status"],
          **ui.heavy)
    ui.on(ui["acm_btn"].click, acm_pictures, controls, ["acm", "look_status"], **ui.heavy)
