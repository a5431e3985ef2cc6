"""All disk I/O of models: references, headers, compatibility, reading, loading.

Nothing here knows about merge methods or recipes; everything above reads
and writes checkpoints through this package.
"""
from .compat import CompatReport, compatibility
from .headers import (DTYPE_BYTES, ModelInfo, TensorMeta, inspect, read_safetensors_header,
                      torch_dtype_of)
from .loading import (cpu_threads_for, default_dtype, load_model, load_tokenizer, pick_device,
                      quantization_status)
from .naming import MODULE_KINDS, VOCAB_TENSORS, is_vocab_tensor, layer_of, module_of
from .reader import TensorReader
from .refs import ZOO_NAMES, resolve, zoo_path

__all__ = ["CompatReport", "compatibility", "DTYPE_BYTES", "ModelInfo", "TensorMeta", "inspect",
           "read_safetensors_header", "torch_dtype_of", "cpu_threads_for", "default_dtype", "load_model",
           "load_tokenizer", "pick_device", "quantization_status", "MODULE_KINDS", "VOCAB_TENSORS",
           "is_vocab_tensor", "layer_of", "module_of", "TensorReader", "ZOO_NAMES", "resolve", "zoo_path"]
