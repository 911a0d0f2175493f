"""Export stage: turn a trained adapter into a GGUF and an Ollama Modelfile that serve the unlearned model.

Steps, in order (``run_export``):

1. preflight (``preflight``): quantizer and converter at hand, adapter and
   base found, base not quantized, disk space; fails in seconds otherwise;
2. merge (``merge``): the adapter merged into a float32 or 16-bit copy of the
   base, checked against the adapter model and the base on forget questions;
3. convert (``convert``, ``converter_input``): llama.cpp's own converter,
   pinned to the llama.cpp that the installed llama-cpp-python wraps;
4. quantize (``quantize``): llama-cpp-python's ``llama_model_quantize``;
5. fix and check the GGUF's serving metadata (``gguf_checks``): control
   tokens, EOS and end-of-turn ids, BOS, chat template, vocabulary size;
6. Modelfile (``modelfile``) from ``modelfiles/<family>.Modelfile``;
7. parity (``parity``): the GGUF served with the Modelfile's TEMPLATE and
   stops answers like the merged model;
8. ``--ollama-create`` (``ollama_create``): upload, create, and confirm that
   Ollama lists the model.
"""

from .config import MERGE_DTYPES, MODES, QUANT_TYPES, ExportConfig, QuantType
from .stage import ExportResult, run_export

__all__ = ["ExportConfig", "ExportResult", "MERGE_DTYPES", "MODES", "QUANT_TYPES", "QuantType", "run_export"]
