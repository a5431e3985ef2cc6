"""Core of the merge explorer: models, scores, masks, methods, engine, probes.

core never imports ui or gradio; the UI and the command line both go
through core.service.
"""
import os as _os
import sys as _sys

# transformers 5 imports fine without these; they keep a machine with no
# network from trying (and waiting on) the Hub when a local folder is used.
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
ASSETS = _os.path.join(ROOT, "assets")
ZOO_DIR = _os.path.join(ASSETS, "zoo")
PROBES_DIR = _os.path.join(ASSETS, "probes")
CACHE_DIR = _os.environ.get("MERGE_EXPLORER_CACHE", _os.path.join(_os.path.expanduser("~"), ".cache", "merge-explorer"))
