"""Choose and open the writer and judge backends for a run, and check that their models exist."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..backends import get_backend
from ..backends.base import GenerationBackend, ModelNotFoundError, check_backend
from ..errors import BackendError
from .cache import CachingBackend, ReplyCache
from .config import AugmentConfig

logger = logging.getLogger(__name__)

DEFAULT_OLLAMA_MODEL = "llama3.2"
LLAMACPP_CONTEXTS = 3


@dataclass(frozen=True)
class BackendChoice:
    """A backend name and the model it runs; ``model`` None means the backend's default."""

    backend: str
    model: Optional[str]

    def label(self) -> str:
        return f"{self.backend}:{self.model or 'embedded gemma3-270m'}"


def _is_model_file(model: Optional[str]) -> bool:
    return bool(model) and Path(str(model)).expanduser().is_file()


def choose_backends(config: AugmentConfig) -> tuple[BackendChoice, BackendChoice]:
    """Resolve auto and defaulted names into (writer, judge) choices.

    ``auto`` picks Ollama when it responds at the host and the writer model is
    not a local file; otherwise the embedded llama.cpp model, with a log line
    saying why.
    """
    backend = config.backend
    if backend == "auto":
        backend = _auto_backend(config)
    judge_backend = config.judge_backend or backend
    writer_model = config.model
    if writer_model is None and config.judge and judge_backend == backend:
        writer_model = config.judge
    if writer_model is None and backend == "ollama":
        writer_model = DEFAULT_OLLAMA_MODEL
    judge_model = config.judge
    if judge_model is None:
        judge_model = writer_model if judge_backend == backend else (
            DEFAULT_OLLAMA_MODEL if judge_backend == "ollama" else None)
    return BackendChoice(backend, writer_model), BackendChoice(judge_backend, judge_model)


def _auto_backend(config: AugmentConfig) -> str:
    from ..backends.ollama import ollama_responds, parse_ollama_host

    if _is_model_file(config.model):
        logger.info("--model %s is a file; using the llamacpp backend", config.model)
        return "llamacpp"
    host = parse_ollama_host(config.ollama_host) if config.ollama_host else None
    if ollama_responds(config.ollama_host):
        logger.info("Ollama responds at %s; using the ollama backend", host or "the default host")
        return "ollama"
    if config.model:
        raise BackendError(
            f"--model {config.model} is not a file and Ollama is not responding at {host or 'the default host'}; "
            "start Ollama (ollama serve), set --ollama-host, or pass --backend llamacpp with a GGUF path"
        )
    logger.warning("Ollama is not responding; using the embedded Gemma 3 270M through llama.cpp "
                   "(--backend llamacpp). Pass --backend ollama to require Ollama.")
    return "llamacpp"


def _backend_options(choice: BackendChoice, config: AugmentConfig) -> dict[str, Any]:
    if choice.backend == "ollama":
        return {"host": config.ollama_host, "timeout": config.timeout, "retries": config.retries}
    # One context per prompt kind (variants, answers, judge), so each few-shot
    # prefix is evaluated once per run instead of once per call.
    return {"n_ctx": config.n_ctx, "timeout": config.timeout, "contexts": LLAMACPP_CONTEXTS}


def open_backends(config: AugmentConfig) -> tuple[CachingBackend, CachingBackend]:
    """Create the writer and judge backends (one instance when they are the same), check them, add the cache.

    Raises ModelNotFoundError listing every missing model with the command
    that fetches it, and BackendError when a server does not respond.
    """
    writer_choice, judge_choice = choose_backends(config)
    writer = get_backend(writer_choice.backend, model=writer_choice.model, **_backend_options(writer_choice, config))
    judge = writer if judge_choice == writer_choice else get_backend(
        judge_choice.backend, model=judge_choice.model, **_backend_options(judge_choice, config))
    try:
        _check_all([writer] if judge is writer else [writer, judge])
    except BaseException:
        _close_all(writer, judge)
        raise
    cache = ReplyCache(config.cache_dir)
    cached_writer = CachingBackend(writer, cache, read=config.cache)
    cached_judge = cached_writer if judge is writer else CachingBackend(judge, cache, read=config.cache)
    return cached_writer, cached_judge


def _check_all(backends: list[GenerationBackend]) -> None:
    missing: list[str] = []
    hints: list[str] = []
    where = ""
    for backend in backends:
        try:
            check_backend(backend)
        except ModelNotFoundError as exc:
            missing.extend(exc.missing)
            if exc.hint:
                hints.append(exc.hint)
            where = getattr(backend, "host", "") or where
    if missing:
        raise ModelNotFoundError(
            f"missing model(s) {', '.join(missing)}" + (f" at {where}" if where else "")
            + (f"; get them with: {' && '.join(hints)}" if hints else ""),
            missing, hint=" && ".join(hints),
        )


def _close_all(*backends: GenerationBackend) -> None:
    for backend in {id(backend): backend for backend in backends}.values():
        try:
            backend.close()
        except Exception:  # closing is best effort during error handling
            logger.debug("closing %s failed", backend.name, exc_info=True)
