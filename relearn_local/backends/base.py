"""The generation backend interface shared by augment, evaluate and serve.

A backend turns chat messages into text, optionally constrained by a flat
JSON schema. Callers build a GenerationRequest, call ``generate`` (or
``stream``) and never learn which backend runs; backends are chosen by name
through ``relearn_local.backends.get_backend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence, runtime_checkable

from ..errors import BackendError


@dataclass(frozen=True)
class GenerationRequest:
    """One generation call.

    ``schema`` is a flat JSON schema (no ``$defs``/``$ref``/``anyOf``) that the
    reply must follow; None means free text. ``max_tokens`` is always finite.
    ``timeout`` is seconds per attempt; None means the backend's default.
    """

    messages: Sequence[Mapping[str, str]]
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    schema: Optional[Mapping[str, Any]] = None
    stop: Sequence[str] = ()
    timeout: Optional[float] = None


@dataclass
class GenerationResult:
    """The reply to one GenerationRequest, with token counts where the backend reports them."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    elapsed_seconds: float = 0.0
    cached: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class GenerationBackend(Protocol):
    """What every backend provides."""

    #: Registry name, such as "ollama" or "llamacpp".
    name: str
    #: The model this backend generates with, as the user named it.
    model: str

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate a reply; raise BackendError (or a subclass) on failure."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the reply as text pieces as they are generated."""
        ...

    def describe(self) -> dict[str, Any]:
        """Return provenance for manifests and cache keys: backend, model, digest, context size."""
        ...

    def close(self) -> None:
        """Release the model or connections."""
        ...


# Errors every backend raises the same way, so that callers can react without
# knowing which backend runs. All are BackendError, so the CLI reports them as
# one line when they escape a stage.


class BackendUnavailableError(BackendError):
    """The server could not be reached or kept failing (connection refused, 5xx) after the retries."""


class BackendTimeoutError(BackendError):
    """A request ran past its per-request timeout on every try."""


class ContextOverflowError(BackendError):
    """The prompt plus the output-token limit does not fit the model's context window.

    ``needed`` and ``limit`` are token counts (``needed`` may be an estimate),
    so that a caller can split its input and ask again.
    """

    def __init__(self, message: str, needed: int, limit: int):
        super().__init__(message)
        self.needed = needed
        self.limit = limit


class ModelNotFoundError(BackendError):
    """Named models are missing on the backend; ``missing`` lists them and ``hint`` is the command that fetches them."""

    def __init__(self, message: str, missing: Sequence[str], hint: str = ""):
        super().__init__(message)
        self.missing = list(missing)
        self.hint = hint


def check_backend(backend: GenerationBackend) -> None:
    """Run the backend's own readiness check (server reachable, model present) when it has one.

    ``check`` is optional so that backends without anything to verify need
    not define it; it raises BackendError (or a subclass) when not ready.
    """
    check = getattr(backend, "check", None)
    if callable(check):
        check()
