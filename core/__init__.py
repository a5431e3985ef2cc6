"""Core of the merge explorer: checkpoints, merge methods, the merge engine,
probes and chat (docs/ARCHITECTURE.md has the tree and the arrows).

core never imports ui or gradio; the UI and the command line both go
through core.service. This module holds only paths.
"""
import os as _os

# transformers 5 imports fine without these; they keep a machine with no
# network from trying (and waiting on) the Hub when a local folder is used.
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
ASSETS = _os.path.join(ROOT, "assets")
ZOO_DIR = _os.path.join(ASSETS, "zoo")
PROBES_DIR = _os.path.join(ASSETS, "probes")
CACHE_DIR = _os.environ.get("MERGE_EXPLORER_CACHE", _os.path.join(_os.path.expanduser("~"), ".cache", "merge-explorer"))
SMOL_ASSETS = _os.path.join(ASSETS, "smol")          # the SmolLM2 family's committed LoRA adapters
SMOL_CACHE = _os.path.join(CACHE_DIR, "smol")        # its converted base and materialised experts
