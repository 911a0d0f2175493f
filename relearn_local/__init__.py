"""relearn-local: make a local language model forget specific knowledge.

The pipeline runs in this order, one module per stage:

1. ``augment``   rewrite each forget question into variants with safe answers
2. ``train``     LoRA training on the augmented forget set and the retain set
3. ``export``    merge, convert to GGUF, quantize, write an Ollama Modelfile
4. ``evaluate``  KFR, KRR and LS before and after unlearning
5. ``serve``     a local HTTP API for the unlearned model

``pipeline`` chains stages 1 to 4. Shared pieces sit beside them: ``data``
(forget and retain sets), ``chat_formats``, ``models`` (base model
resolution), ``runs`` (run folders) and ``config``.
"""

__version__ = "0.1.0"
