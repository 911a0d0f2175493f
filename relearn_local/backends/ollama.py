"""Generation through a local Ollama server with the official ``ollama`` Python client.

Requests go to ``/api/chat`` with ``stream: false``, the flat JSON schema in
``format``, and ``options`` carrying seed, temperature, an output-token limit
(``num_predict``) and a context size (``num_ctx``) large enough for the prompt
plus the output, because Ollama silently cuts prompts longer than its window.

Each try has a total deadline: httpx's timeout bounds each read, so a server
that sends a byte a second would never time out without the deadline
transport below. Connection errors, timeouts and 5xx replies are retried with
exponential backoff; 4xx replies are not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterator, Optional

import httpx
import ollama

from ..errors import BackendError
from .base import (BackendTimeoutError, BackendUnavailableError, ContextOverflowError, GenerationRequest,
                   GenerationResult, ModelNotFoundError)
from .ollama_options import (build_options, context_size_for, estimate_prompt_tokens, find_model,
                             parse_ollama_host)
from .retry import RetryPolicy, call_with_retries
from .schema import flatten_schema

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "llama3.2"
DEFAULT_TIMEOUT = 120.0
# Context sizes above this are refused unless the caller raises it; the
# model's own limit (from /api/show) lowers it further.
DEFAULT_MAX_CONTEXT = 32768
START_HINT = "start Ollama (ollama serve) or point --ollama-host / OLLAMA_HOST at a running server"


class _DeadlineStream(httpx.SyncByteStream):
    """A response body that raises ReadTimeout once the request's total deadline has passed."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: float, request: httpx.Request):
        self._inner = inner
        self._deadline = deadline
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout("the reply did not finish within the request timeout", request=self._request)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _DeadlineTransport(httpx.BaseTransport):
    """An httpx transport that gives every request a total time limit, not only a per-read one."""

    def __init__(self, seconds: float):
        self._seconds = seconds
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self._seconds
        response = self._inner.handle_request(request)
        if time.monotonic() > deadline:
            response.close()
            raise httpx.ReadTimeout("no reply within the request timeout", request=request)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_DeadlineStream(response.stream, deadline, request),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ollama.ResponseError):
        return exc.status_code >= 500 or exc.status_code == -1
    return isinstance(exc, (httpx.TransportError, ConnectionError))


class OllamaBackend:
    """An Ollama model reached over HTTP. Safe to share between threads."""

    name = "ollama"

    def __init__(self, model: Optional[str] = None, host: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = 2, retry_backoff: float = 0.5, max_context: int = DEFAULT_MAX_CONTEXT,
                 keep_alive: Optional[str] = None):
        self.model = model or DEFAULT_MODEL
        self.host = parse_ollama_host(host if host is not None else os.environ.get("OLLAMA_HOST"))
        self.timeout = float(timeout)
        self.policy = RetryPolicy(retries=retries, backoff=retry_backoff)
        self.max_context = max_context
        self.keep_alive = keep_alive
        self.digest: Optional[str] = None
        self.model_context: Optional[int] = None
        self._clients: dict[float, ollama.Client] = {}
        self._lock = threading.Lock()

    def _client(self, timeout: Optional[float]) -> ollama.Client:
        seconds = float(timeout or self.timeout)
        with self._lock:
            client = self._clients.get(seconds)
            if client is None:
                client = ollama.Client(host=self.host, timeout=httpx.Timeout(seconds),
                                       transport=_DeadlineTransport(seconds))
                self._clients[seconds] = client
            return client

    def _with_retries(self, function, what: str, timeout: float):
        try:
            return call_with_retries(function, self.policy, _is_transient, what)
        except ollama.ResponseError as exc:
            raise self._response_error(exc) from None
        except httpx.TimeoutException:
            raise BackendTimeoutError(
                f"{what} timed out after {timeout:g} s on each of {self.policy.retries + 1} tries; "
                "raise --timeout or use a smaller model"
            ) from None
        except (httpx.TransportError, ConnectionError) as exc:
            raise BackendUnavailableError(
                f"cannot reach Ollama at {self.host} ({type(exc).__name__}); {START_HINT}"
            ) from None

    def _response_error(self, exc: "ollama.ResponseError") -> BackendError:
        if exc.status_code == 404:
            return ModelNotFoundError(
                f"Ollama at {self.host} has no model {self.model!r} ({exc.error}); pull it with: ollama pull {self.model}",
                [self.model], hint=f"ollama pull {self.model}",
            )
        if exc.status_code >= 500 or exc.status_code == -1:
            return BackendUnavailableError(f"Ollama at {self.host} kept failing: {exc.error} (status {exc.status_code})")
        return BackendError(f"Ollama at {self.host} rejected the request: {exc.error} (status {exc.status_code})")

    def check(self) -> None:
        """Verify that the server responds and has the model; record its digest and context length.

        Raises BackendUnavailableError when the server does not respond and
        ModelNotFoundError (with ``ollama pull`` in the hint) when the model is missing.
        """
        listed = self._with_retries(lambda: self._client(self.timeout).list(), f"listing models at {self.host}",
                                    self.timeout)
        entries = [model.model_dump() for model in listed.models]
        entry = find_model(self.model, entries)
        if entry is None:
            raise ModelNotFoundError(
                f"Ollama at {self.host} has no model {self.model!r}; pull it with: ollama pull {self.model}",
                [self.model], hint=f"ollama pull {self.model}",
            )
        self.digest = entry.get("digest")
        self.model_context = self._read_context_length()

    def _read_context_length(self) -> Optional[int]:
        try:
            shown = self._client(self.timeout).show(self.model)
        except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError) as exc:
            # ValueError covers a reply without model_info, which the client's model rejects.
            logger.info("could not read the context length of %s from /api/show (%s)", self.model, exc)
            return None
        info = shown.modelinfo or {}
        for key, value in info.items():
            if key.endswith(".context_length") and isinstance(value, int):
                return value
        return None

    def context_limit(self) -> int:
        """Return the largest context window this backend requests."""
        if self.model_context:
            return min(self.max_context, self.model_context)
        return self.max_context

    def _chat_arguments(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        prompt_tokens = estimate_prompt_tokens(request.messages)
        num_ctx = context_size_for(prompt_tokens, request.max_tokens)
        limit = self.context_limit()
        if num_ctx > limit:
            if prompt_tokens + request.max_tokens > limit:
                raise ContextOverflowError(
                    f"the prompt (about {prompt_tokens} tokens) plus {request.max_tokens} output tokens does not fit "
                    f"the context window of {limit} tokens for {self.model}",
                    needed=prompt_tokens + request.max_tokens, limit=limit,
                )
            num_ctx = limit
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(message) for message in request.messages],
            "stream": stream,
            "options": build_options(request, num_ctx),
        }
        if request.schema is not None:
            arguments["format"] = flatten_schema(request.schema)
        if self.keep_alive is not None:
            arguments["keep_alive"] = self.keep_alive
        return arguments

    def generate(self, request: GenerationRequest) -> GenerationResult:
        arguments = self._chat_arguments(request, stream=False)
        timeout = request.timeout or self.timeout
        client = self._client(timeout)
        started = time.monotonic()
        response = self._with_retries(lambda: client.chat(**arguments), f"request to {self.model} at {self.host}",
                                      timeout)
        return GenerationResult(
            text=response.message.content or "",
            prompt_tokens=response.prompt_eval_count or 0,
            completion_tokens=response.eval_count or 0,
            finish_reason=response.done_reason or "stop",
            elapsed_seconds=time.monotonic() - started,
            metadata={"num_ctx": arguments["options"]["num_ctx"]},
        )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the reply in pieces. Failures before the first piece are retried; later ones are raised."""
        arguments = self._chat_arguments(request, stream=True)
        timeout = request.timeout or self.timeout
        client = self._client(timeout)

        def first_piece():
            pieces = client.chat(**arguments)
            return pieces, next(pieces, None)

        pieces, first = self._with_retries(first_piece, f"streaming from {self.model} at {self.host}", timeout)
        if first is not None and first.message.content:
            yield first.message.content
        try:
            for piece in pieces:
                if piece.message.content:
                    yield piece.message.content
        except ollama.ResponseError as exc:
            raise self._response_error(exc) from None
        except httpx.TimeoutException:
            raise BackendTimeoutError(f"streaming from {self.model} stopped: no reply within {timeout:g} s") from None
        except (httpx.TransportError, ConnectionError) as exc:
            raise BackendUnavailableError(f"streaming from {self.model} at {self.host} broke off ({exc})") from None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model,
            "digest": self.digest,
            "host": self.host,
            "context_limit": self.context_limit(),
        }

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def ollama_responds(host: Optional[str] = None, timeout: float = 2.0) -> bool:
    """Tell whether an Ollama server responds at ``host`` (or OLLAMA_HOST) within ``timeout`` seconds."""
    base_url = parse_ollama_host(host if host is not None else os.environ.get("OLLAMA_HOST"))
    try:
        with ollama.Client(host=base_url, timeout=httpx.Timeout(timeout), transport=_DeadlineTransport(timeout)) as client:
            client.list()
    except (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError):
        return False
    return True


def list_models(host: Optional[str] = None, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Return the /api/tags entries of the server at ``host``; raise BackendUnavailableError when it does not respond."""
    base_url = parse_ollama_host(host if host is not None else os.environ.get("OLLAMA_HOST"))
    try:
        with ollama.Client(host=base_url, timeout=httpx.Timeout(timeout), transport=_DeadlineTransport(timeout)) as client:
            return [model.model_dump() for model in client.list().models]
    except (ollama.ResponseError, httpx.HTTPError, ConnectionError) as exc:
        raise BackendUnavailableError(f"cannot reach Ollama at {base_url} ({type(exc).__name__}); {START_HINT}") from None
