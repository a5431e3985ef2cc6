"""All disk I/O of models: references, headers, compatibility, reading, loading.

Nothing here knows about merge methods or recipes; everything above reads
and writes checkpoints through this package.
"""
from .compat import CompatReport, compatibility
from .headers import (DTYPE_BYTES, ModelInfo, TensorMeta, inspect, read_safetensors_header,
                      torch_dtype_of)
from .loading import (cpu_threads_for, default_dtype, load_model, load_tokenizer, pick_device,
                      quantization_status, release_memory, single_thread)
from .layout import Layout, decoder_parts, layout, max_length, parts_or_refuse, to_checkpoint, vocab_tensors
from .naming import MODULE_KINDS, OUTSIDE_POINTS, layer_of, module_of, point_names, point_of
from .reader import Reader
from .refs import ZOO_NAMES, resolve, zoo_path
from . import adapters  # noqa: F401  (registers the LoRA references with refs.resolve)

__all__ = ["CompatReport", "compatibility", "DTYPE_BYTES", "ModelInfo", "TensorMeta", "inspect",
           "read_safetensors_header", "torch_dtype_of", "cpu_threads_for", "default_dtype", "load_model",
           "load_tokenizer", "pick_device", "quantization_status", "release_memory", "single_thread", "MODULE_KINDS",
           "OUTSIDE_POINTS", "Layout", "decoder_parts", "layout", "max_length", "parts_or_refuse", "to_checkpoint", "vocab_tensors", "layer_of", "module_of", "point_names", "point_of",
           "Reader", "ZOO_NAMES", "resolve", "zoo_path"]
