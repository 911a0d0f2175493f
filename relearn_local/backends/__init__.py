"""Generation backends chosen by name; see ``base.GenerationBackend`` for the interface.

Backend modules are imported only when chosen, so that importing this
package loads neither llama_cpp, torch nor the ollama client.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import BackendError
from .base import GenerationBackend, GenerationRequest, GenerationResult

# name -> "module:class", relative to this package.
BACKENDS: dict[str, str] = {
    "ollama": ".ollama:OllamaBackend",
    "llamacpp": ".llamacpp:LlamaCppBackend",
    "transformers": ".transformers_backend:TransformersBackend",
}


def get_backend(name: str, model: str | None = None, **options: Any) -> GenerationBackend:
    """Create the backend ``name`` for ``model``; options are passed to its constructor."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None
    module_name, class_name = target.split(":")
    module = importlib.import_module(module_name, __name__)
    backend_class = getattr(module, class_name)
    return backend_class(model=model, **options)


__all__ = ["BACKENDS", "GenerationBackend", "GenerationRequest", "GenerationResult", "get_backend"]
