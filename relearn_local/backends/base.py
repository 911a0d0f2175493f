"""The generation backend interface shared by augment, evaluate and serve.

A backend turns chat messages into text, optionally constrained by a flat
JSON schema. Callers build a GenerationRequest, call ``generate`` (or
``stream``) and never learn which backend runs; backends are chosen by name
through ``relearn_local.backends.get_backend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence, runtime_checkable


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
