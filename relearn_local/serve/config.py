"""The serve stage's config: which model to serve, where to listen, and the request limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import option
from ..errors import ConfigError


@dataclass
class ServeConfig:
    """Settings of ``relearn-local serve``; defaults < config file (section ``serve``) < flags."""

    model: str = option(
        "",
        "Model to serve: a GGUF file, an export run folder containing one .gguf, "
        "'gemma3-270m' (the embedded base) or ollama:NAME.",
    )
    compare: Optional[str] = option(
        None,
        "Original model to answer beside the served one (same forms as model), "
        "shown side by side on the page and at POST /original/.",
    )
    host: str = option("127.0.0.1", "Address to listen on; the default accepts connections from this machine only.")
    port: int = option(8000, "TCP port to listen on; 0 picks a free port.")
    max_question_chars: int = option(
        4000, "Maximum characters in a question (for chat completions: in all messages together)."
    )
    max_tokens: int = option(
        256, "Maximum output tokens per answer; larger max_tokens in chat completion requests are lowered to this."
    )
    max_body_bytes: int = option(
        262144, "Maximum size of a request body in bytes; larger bodies are rejected with 413 before they are read."
    )
    max_pending: int = option(
        8,
        "Maximum requests admitted at once per model (one generating, the rest queued); "
        "further requests get 503 until a slot frees.",
    )
    queue_timeout: float = option(
        300.0, "Seconds a queued request waits for the model before it gets 503."
    )
    temperature: float = option(0.0, "Sampling temperature for /unlearn/ and for chat requests that set none.")
    seed: int = option(0, "Sampling seed for requests that set none.")
    system_prompt: Optional[str] = option(
        None, "System text put before every /unlearn/ question (Gemma folds it into the user turn)."
    )
    context_size: int = option(2048, "Context window in tokens for a GGUF loaded with llama.cpp.")
    ollama_host: Optional[str] = option(
        None, "Ollama server for ollama:NAME models; unset means $OLLAMA_HOST or http://127.0.0.1:11434."
    )
    request_timeout: float = option(
        600.0, "Seconds one generation may take; passed to the backend as its per-request timeout."
    )

    def validate(self) -> None:
        if not self.model or not self.model.strip():
            raise ConfigError("serve needs a model: pass --model with a GGUF file, an export run folder or ollama:NAME")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is invalid; choose 0-65535 (0 picks a free port)")
        positive = {
            "max_question_chars": self.max_question_chars,
            "max_tokens": self.max_tokens,
            "max_body_bytes": self.max_body_bytes,
            "max_pending": self.max_pending,
            "queue_timeout": self.queue_timeout,
            "context_size": self.context_size,
            "request_timeout": self.request_timeout,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} = {value} is invalid; it must be greater than 0")
        if self.temperature < 0:
            raise ConfigError(f"temperature = {self.temperature} is invalid; it must be 0 or greater")
        # A question of max_question_chars must fit in a body even when a client escapes every character,
        # and a character outside the BMP escapes to 12 bytes (two \uXXXX surrogates).
        needed = self.max_question_chars * 12 + 1024
        if self.max_body_bytes < needed:
            raise ConfigError(
                f"max_body_bytes = {self.max_body_bytes} is too small for max_question_chars = "
                f"{self.max_question_chars}; set it to at least {needed}"
            )
