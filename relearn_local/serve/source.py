"""Turn a ``--model``/``--compare`` value into a loaded generation backend.

Accepted forms: a GGUF file, a folder (such as an export run folder) that
contains exactly one ``.gguf``, the embedded base name ``gemma3-270m``, and
``ollama:NAME`` for a model served by Ollama.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError

logger = logging.getLogger(__name__)

OLLAMA_PREFIX = "ollama:"


@dataclass(frozen=True)
class ModelSource:
    """Origin of a served model: the backend name and the value passed to it as ``model``.

    ``note`` explains a choice the user did not spell out, such as the GGUF
    picked from a folder.
    """

    spec: str
    backend: str
    model: str
    label: str
    note: Optional[str] = None

    @property
    def display(self) -> str:
        """Return the text that shows the user exactly which model is served."""
        if self.note:
            return self.note
        if self.backend == "ollama":
            return f"{self.label} (through Ollama)"
        return self.model


def resolve_model_source(spec: str, option: str = "--model") -> ModelSource:
    """Resolve a served-model value; raise ModelError naming ``option`` when it is not usable."""
    from ..models import EMBEDDED_BASE

    text = spec.strip()
    if text.startswith(OLLAMA_PREFIX):
        name = text[len(OLLAMA_PREFIX):].strip()
        if not name:
            raise ModelError(f"{option} {spec!r} names no Ollama model; write it as ollama:NAME, e.g. ollama:my-model")
        return ModelSource(spec=spec, backend="ollama", model=name, label=text)
    if text == EMBEDDED_BASE:
        from ..models import embedded_gguf_path

        # The backend resolves the name itself, from the package's known digest instead of reading the file.
        path = embedded_gguf_path()
        return ModelSource(spec=spec, backend="llamacpp", model=EMBEDDED_BASE, label=EMBEDDED_BASE,
                           note=f"the embedded base model {EMBEDDED_BASE} ({path})")
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_folder(spec, path, option)
    if path.is_file():
        _check_gguf(path, option)
        return ModelSource(spec=spec, backend="llamacpp", model=str(path.resolve()), label=path.name)
    raise ModelError(
        f"{option} {spec}: no such file or folder; pass a GGUF file, an export run folder, "
        f"'{EMBEDDED_BASE}' or ollama:NAME"
    )


def _from_folder(spec: str, folder: Path, option: str) -> ModelSource:
    candidates = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() == ".gguf")
    if not candidates:
        raise ModelError(
            f"{option} {folder} contains no .gguf file; pass a GGUF file, or create one with "
            "relearn-local export --adapter RUN --out DIR"
        )
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates)
        raise ModelError(f"{option} {folder} contains {len(candidates)} .gguf files ({names}); pass one of them")
    chosen = candidates[0]
    _check_gguf(chosen, option)
    return ModelSource(spec=spec, backend="llamacpp", model=str(chosen.resolve()), label=chosen.name,
                       note=f"{chosen} (the only .gguf in {folder})")


def _check_gguf(path: Path, option: str) -> None:
    try:
        with path.open("rb") as stream:
            magic = stream.read(4)
    except OSError as exc:
        raise ModelError(f"{option} {path} cannot be read: {exc.strerror}") from None
    if magic != b"GGUF":
        raise ModelError(
            f"{option} {path} is not a GGUF file; serve needs a GGUF (see relearn-local export) or ollama:NAME"
        )


def load_backend(source: ModelSource, context_size: int, ollama_host: Optional[str] = None) -> Any:
    """Create the backend for ``source`` and check that it can generate before the server starts.

    A GGUF is loaded into memory now, by a one-token generation, so that a
    broken file fails at start-up and the first request does not pay for
    the load. For Ollama the server and the model are checked.
    """
    from ..backends import get_backend
    from ..backends.base import GenerationRequest, check_backend

    if source.backend == "ollama":
        options: dict[str, Any] = {}
        host = ollama_host or os.environ.get("OLLAMA_HOST")
        if host:
            options["host"] = host
        backend = get_backend("ollama", model=source.model, **options)
    else:
        backend = get_backend("llamacpp", model=source.model, n_ctx=context_size)
    try:
        check_backend(backend)
        if source.backend == "llamacpp":
            backend.generate(GenerationRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=1))
    except BaseException:
        backend.close()
        raise
    logger.info("loaded %s with the %s backend", source.label, source.backend)
    return backend
