"""Generation in-process with llama-cpp-python from a GGUF file; the embedded Gemma 3 270M by default.

Prompts are rendered with the model family's chat format (detected from the
GGUF metadata) and tokenized piece by piece: turn markers with special tokens
parsed, message text without, so that text in a message can never open a new
turn. Exactly one BOS is prepended, and the prompt is passed as token ids so
llama.cpp adds no second one. A JSON schema in the request constrains the
output through a grammar, and every call has a finite output-token limit.
One lock serialises calls, because a llama.cpp context is not thread-safe.

Evaluating a prompt costs as much as generating a tenth of its length, and
callers such as augment alternate between a few long few-shot prompts. With
``contexts`` above 1 the backend keeps a pool of contexts over the same
memory-mapped weights and sends each prompt to the context whose cached tokens
share the longest prefix with it, so that a recurring prefix is evaluated
once. Each context costs its own KV cache (``n_ctx`` tokens).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from ..chat_formats import ChatFormat, get_chat_format
from ..errors import BackendError, ModelError
from ..models import EMBEDDED_BASE, ResolvedModel, resolve_base
from .base import BackendTimeoutError, ContextOverflowError, GenerationRequest, GenerationResult
from .llamacpp_grammar import GrammarGate, schema_to_grammar
from .schema import flatten_schema

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT = 8192
DEFAULT_POOL_SIZE = 1
# A context is reused for a prompt only when they share at least this many
# tokens. Otherwise a new context is opened while the pool has room.
MIN_SHARED_PREFIX = 32


@contextlib.contextmanager
def _native_stderr_silenced(enabled: bool) -> Iterator[None]:
    """Hide llama.cpp's native start-up messages, which bypass Python logging and go straight to fd 2."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def resolve_gguf(model: Optional[str]) -> ResolvedModel:
    """Resolve ``model`` (None, 'gemma3-270m' or a GGUF path) to a local GGUF with its chat family."""
    resolved = resolve_base(model or EMBEDDED_BASE)
    if resolved.gguf_path is None:
        raise ModelError(
            f"the llamacpp backend needs a GGUF file, and {model!r} is a {resolved.kind} model; "
            "pass a .gguf path, or use --backend ollama"
        )
    return resolved


class LlamaCppBackend:
    """A GGUF model run by llama-cpp-python in this process."""

    name = "llamacpp"

    def __init__(self, model: Optional[str] = None, n_ctx: int = DEFAULT_CONTEXT, n_threads: Optional[int] = None,
                 chat_format: Optional[str] = None, timeout: Optional[float] = None, verbose: bool = False,
                 top_k_gate: int = 40, contexts: int = DEFAULT_POOL_SIZE):
        self.resolved = resolve_gguf(model)
        self.model = model or EMBEDDED_BASE
        self.path = Path(self.resolved.gguf_path)  # type: ignore[arg-type]
        self.chat_format: ChatFormat = get_chat_format(chat_format or self.resolved.family)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.timeout = timeout
        self.verbose = verbose
        self.top_k_gate = top_k_gate
        self.contexts = max(1, contexts)
        self._pool: list[Any] = []
        self._end_tokens: list[int] = []
        self._turn_start_tokens: frozenset[int] = frozenset()
        self._add_bos = True
        self._lock = threading.RLock()

    def _open_context(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendError("the llamacpp backend needs llama-cpp-python; install it with: pip install llama-cpp-python") from exc
        logger.info("loading %s with llama.cpp (context %d tokens)", self.path, self.n_ctx)
        with _native_stderr_silenced(not self.verbose):
            try:
                llama = Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                              verbose=self.verbose)
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"llama.cpp cannot load {self.path} ({exc})") from exc
        self._pool.append(llama)
        return llama

    def _load(self) -> Any:
        """Return a context for tokenizing, opening the first one when the pool is empty."""
        if self._pool:
            return self._pool[-1]
        llama = self._open_context()
        self._add_bos = llama.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
        self._end_tokens = self._stop_token_ids(llama)
        self._turn_start_tokens = self._turn_start_token_ids(llama)
        return llama

    def _context_for(self, prompt: Sequence[int]) -> tuple[Any, int]:
        """Pick the pooled context that shares the longest prefix with ``prompt``; return it and the shared length.

        The pool is kept in order of use, most recent last.
        """
        best, best_shared = None, -1
        for llama in self._pool:
            shared = _shared_prefix(llama.input_ids[: llama.n_tokens], prompt)
            if shared > best_shared:
                best, best_shared = llama, shared
        if best is None or (best_shared < MIN_SHARED_PREFIX and len(self._pool) < self.contexts):
            best, best_shared = self._open_context(), 0
        elif best_shared < MIN_SHARED_PREFIX:
            best, best_shared = self._pool[0], 0
        self._pool.remove(best)
        self._pool.append(best)
        return best, best_shared

    def _stop_token_ids(self, llama: Any) -> list[int]:
        ids = {llama.token_eos()}
        for marker in self.chat_format.stop:
            tokens = llama.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
            if len(tokens) == 1:
                ids.add(tokens[0])
        return sorted(token for token in ids if token >= 0)

    def _turn_start_token_ids(self, llama: Any) -> frozenset[int]:
        """Return the tokens that open a turn (Gemma's <start_of_turn>, Llama 3's <|start_header_id|>).

        llama.cpp detokenizes control tokens to empty text, so a base model
        that starts a new turn would slip past the stop strings. Generation
        stops on these tokens instead.
        """
        ids = set()
        for marker in (self.chat_format.user_start, self.chat_format.assistant_start, self.chat_format.system_start):
            if marker:
                tokens = llama.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
                plain = llama.tokenize(marker.encode("utf-8"), add_bos=False, special=False)
                if tokens and tokens[0] not in plain:
                    ids.add(tokens[0])
        return frozenset(ids)

    def _stops_at_turn_start(self, ids: Any, _logits: Any) -> bool:
        return len(ids) > 0 and int(ids[-1]) in self._turn_start_tokens

    def encode_messages(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Tokenize a chat prompt that ends where the reply begins, with exactly one BOS when the model uses one."""
        llama = self._load()
        fmt = self.chat_format
        ids: list[int] = []

        def add(text: str, special: bool) -> None:
            if text:
                ids.extend(llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))

        starts = {"system": fmt.system_start, "user": fmt.user_start, "assistant": fmt.assistant_start}
        for turn in fmt.fold_system(messages):
            add(starts[turn["role"]], special=True)
            add(turn["content"], special=False)
            add(fmt.turn_end, special=True)
            add(fmt.turn_gap, special=False)
        add(fmt.assistant_start, special=True)
        bos = llama.token_bos()
        while ids and ids[0] == bos:
            ids.pop(0)
        if self._add_bos and bos >= 0:
            ids.insert(0, bos)
        return ids

    def context_limit(self) -> int:
        return self.n_ctx

    def _completion_arguments(self, request: GenerationRequest, prompt: list[int]) -> dict[str, Any]:
        if request.max_tokens is None or request.max_tokens <= 0:
            raise BackendError(f"max_tokens must be a positive number, got {request.max_tokens!r}")
        needed = len(prompt) + request.max_tokens
        if needed > self.n_ctx:
            raise ContextOverflowError(
                f"the prompt ({len(prompt)} tokens) plus {request.max_tokens} output tokens does not fit the "
                f"context window of {self.n_ctx} tokens", needed=needed, limit=self.n_ctx,
            )
        return {
            "prompt": prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
            "stop": list(dict.fromkeys([*self.chat_format.stop, *request.stop])),
        }

    def _gate(self, llama: Any, request: GenerationRequest, prompt_length: int) -> Optional[GrammarGate]:
        if request.schema is None:
            return None
        grammar = schema_to_grammar(flatten_schema(request.schema))
        return GrammarGate(llama.model, grammar, prompt_length, self._end_tokens,
                           greedy=request.temperature <= 0, top_k=self.top_k_gate)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        with self._lock:
            prompt = self.encode_messages(request.messages)
            arguments = self._completion_arguments(request, prompt)
            timeout = request.timeout or self.timeout
            deadline = time.monotonic() + timeout if timeout else None
            timed_out = []

            # NOTE: the deadline is checked between generated tokens, so a long
            # prompt evaluation is not interrupted; it only delays the check.
            def past_deadline(_ids: Any, _logits: Any) -> bool:
                if deadline is not None and time.monotonic() > deadline:
                    timed_out.append(True)
                    return True
                return False

            llama, shared = self._context_for(prompt)
            gate = self._gate(llama, request, len(prompt))
            started = time.monotonic()
            try:
                output = llama.create_completion(
                    **arguments,
                    stopping_criteria=StoppingCriteriaList([past_deadline, self._stops_at_turn_start]),
                    logits_processor=LogitsProcessorList([gate]) if gate else None,
                )
            finally:
                if gate is not None:
                    gate.close()
            if timed_out:
                raise BackendTimeoutError(f"llama.cpp generation passed the {timeout:g} s timeout")
            choice = output["choices"][0]
            usage = output.get("usage") or {}
            elapsed = time.monotonic() - started
            logger.debug("llama.cpp: %d prompt tokens (%d reused), %s generated in %.1f s, %d full grammar checks",
                         len(prompt), shared, usage.get("completion_tokens"), elapsed, gate.full_checks if gate else 0)
            return GenerationResult(
                text=self.chat_format.cut_at_stop(choice["text"]),
                prompt_tokens=usage.get("prompt_tokens", len(prompt)),
                completion_tokens=usage.get("completion_tokens", 0),
                finish_reason=choice.get("finish_reason") or "stop",
                elapsed_seconds=elapsed,
            )

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the reply in pieces; the model stays locked until the stream ends or is closed."""
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        with self._lock:
            prompt = self.encode_messages(request.messages)
            arguments = self._completion_arguments(request, prompt)
            llama, _ = self._context_for(prompt)
            gate = self._gate(llama, request, len(prompt))
            try:
                pieces = llama.create_completion(
                    **arguments, stream=True, logits_processor=LogitsProcessorList([gate]) if gate else None,
                    stopping_criteria=StoppingCriteriaList([self._stops_at_turn_start]),
                )
                for piece in pieces:
                    text = piece["choices"][0]["text"]
                    if text:
                        yield text
            finally:
                if gate is not None:
                    gate.close()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model,
            "path": str(self.path),
            "digest": self.resolved.digest,
            "family": self.chat_format.family,
            "context_limit": self.n_ctx,
        }

    def close(self) -> None:
        with self._lock:
            for llama in self._pool:
                llama.close()
            self._pool.clear()


def _shared_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    shared = 0
    for left, right in zip(cached, prompt):
        if left != right:
            break
        shared += 1
    return shared
