"""The Learn tab's handlers: the tour's recipes."""
from __future__ import annotations


import gradio as gr


from .. import controls as C
from .. import learn as L


# ------------------------------------------------------------------ learn
def learn_recipe(step: str):
    """Controls for a walkthrough step's merge, and the tab it opens."""
    if step == "ta":
        return C.values_from_recipe(L.TA_RECIPE) + [gr.Tabs(selected="merge")]
    if step == "led":
        return C.values_from_recipe(L.led_recipe(C.spec_of("led"))) + [gr.Tabs(selected="chat")]
    raise ValueError(step)


