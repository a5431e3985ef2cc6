"""Launch the Merge Explorer app: builds the demo (ui.app.build_demo) and serves it.

HOST / PORT (or GRADIO_SERVER_NAME / GRADIO_SERVER_PORT) choose where it
listens; on a Hugging Face Space (SPACE_ID set) it listens on 0.0.0.0.
"""
import os

try:  # ZeroGPU wants `spaces` imported before torch; absent off Spaces
    import spaces  # noqa: F401
except ImportError:
    pass

from ui.app import build_demo, launch_options, start_warming

if __name__ == "__main__":
    default_host = "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"
    host = os.environ.get("HOST") or os.environ.get("GRADIO_SERVER_NAME") or default_host
    port = int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    demo = build_demo()
    # the first visitor's first probes find the base's and the parents' results ready
    # (MERGE_EXPLORER_WARM=0: not)
    if os.environ.get("MERGE_EXPLORER_WARM", "1") != "0":
        start_warming()
    demo.launch(server_name=host, server_port=port, **launch_options())
