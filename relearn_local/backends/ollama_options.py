"""Pure helpers for the Ollama backend: host strings, context sizes, request options, model names.

Kept apart from the client code so that each rule is tested on its own.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import GenerationRequest

DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"
# Ollama's own default context window; requests never ask for less.
MIN_CONTEXT = 2048
# Rough per-message cost of the chat template's role markers, in tokens.
MESSAGE_OVERHEAD_TOKENS = 8
# A token covers about 4 bytes of English and 3 bytes (one character) of CJK
# text. Dividing by 3 overestimates English, so the window errs on the large side.
BYTES_PER_TOKEN = 3


def parse_ollama_host(value: str | None) -> str:
    """Turn an OLLAMA_HOST-style value into a base URL such as ``http://127.0.0.1:11434``.

    Accepts ``host``, ``host:port``, ``:port``, ``[ipv6]``, ``[ipv6]:port`` and
    URLs with a scheme. Without a scheme the port defaults to 11434; with
    ``http://`` or ``https://`` and no port it is 80 or 443, as in Ollama's
    own client. The wildcard addresses a server listens on (``0.0.0.0``,
    ``::``) are replaced by the loopback address, which is where a client on
    the same machine reaches it. Raises ConfigError on values that are not a
    host.
    """
    text = (value or "").strip()
    if not text:
        return DEFAULT_HOST
    has_scheme = "://" in text
    split = urlsplit(text if has_scheme else f"http://{text}")
    scheme = split.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"Ollama host {value!r} has scheme {scheme!r}; use http:// or https://")
    try:
        port = split.port
    except ValueError:
        raise ConfigError(f"Ollama host {value!r} has an invalid port; expected a number from 1 to 65535") from None
    hostname = split.hostname or "127.0.0.1"
    if port is None and not has_scheme:
        port = DEFAULT_PORT
    elif port is None:
        port = 443 if scheme == "https" else 80
    if split.query or split.fragment or "@" in split.netloc:
        raise ConfigError(f"Ollama host {value!r} must not carry credentials, a query or a fragment")
    hostname = _loopback_for_wildcard(hostname)
    shown_host = f"[{hostname}]" if ":" in hostname else hostname
    path = split.path.rstrip("/")
    return f"{scheme}://{shown_host}:{port}{path}"


def _loopback_for_wildcard(hostname: str) -> str:
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return hostname
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return hostname


def estimate_prompt_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Overestimate the tokens of a chat prompt from its UTF-8 size (no tokenizer is available client-side)."""
    total = 0
    for message in messages:
        total += math.ceil(len(message.get("content", "").encode("utf-8")) / BYTES_PER_TOKEN)
        total += MESSAGE_OVERHEAD_TOKENS
    return total


def context_size_for(prompt_tokens: int, max_tokens: int, minimum: int = MIN_CONTEXT) -> int:
    """Return the context window to request: the next power of two that fits prompt plus output.

    Powers of two keep the number of distinct sizes small, because Ollama
    reloads a model whenever ``num_ctx`` changes.
    """
    needed = max(prompt_tokens + max_tokens, minimum, 1)
    return 1 << math.ceil(math.log2(needed))


def build_options(request: GenerationRequest, num_ctx: int) -> dict[str, Any]:
    """Return the ``options`` object of an /api/chat request."""
    options: dict[str, Any] = {
        "seed": request.seed,
        "temperature": request.temperature,
        "num_predict": request.max_tokens,
        "num_ctx": num_ctx,
    }
    if request.stop:
        options["stop"] = list(request.stop)
    return options


def normalize_model_name(name: str) -> str:
    """Add the ``:latest`` tag Ollama assumes when a model name has none."""
    last_part = name.rsplit("/", 1)[-1]
    return name if ":" in last_part else f"{name}:latest"


def find_model(name: str, listed: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Return the /api/tags entry for ``name`` (tag-insensitive for ``:latest``), or None."""
    wanted = normalize_model_name(name)
    for entry in listed:
        for key in ("model", "name"):
            candidate = entry.get(key)
            if candidate and normalize_model_name(candidate) == wanted:
                return entry
    return None
