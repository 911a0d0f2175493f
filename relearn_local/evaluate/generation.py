"""Answers from the model under evaluation, cleaned so that only the model's own reply is scored.

Backends return only new tokens. Small and base models still echo the
question or run on into invented "Question: ... Answer: ..." turns, so every
reply is cut at the first turn or stop marker of any known chat format, a
leading echo of the question and a leading "Answer:" label are removed, and
the reply ends where it repeats the question or starts a new labelled turn.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..backends.base import GenerationRequest
from ..chat_formats import CHAT_FORMATS
from ..errors import ConfigError, RelearnError
from .config import EvaluateConfig

logger = logging.getLogger(__name__)

OLLAMA_PREFIX = "ollama:"

# Turn and stop markers of every chat format, plus end-of-text strings that leak through some servers.
_MARKERS = tuple(sorted(
    {marker for fmt in CHAT_FORMATS.values() for marker in (*fmt.stop, fmt.user_start, fmt.assistant_start,
                                                           fmt.turn_end) if marker}
    | {"<start_of_turn>", "<|start_header_id|>", "<|im_start|>", "</s>", "<eos>", "<|endoftext|>"},
    key=len, reverse=True,
))
_ROLE = r"(?:question|answer|q|a|user|assistant|model|human|ai|system)"
# A role label opening a line, or following the end of a sentence, starts an invented turn.
_INVENTED_TURN = re.compile(rf"(?:^|\n|(?<=[.!?]))[ \t]*(?:\*\*)?{_ROLE}(?:\*\*)?[ \t]*[:：]", re.IGNORECASE)
_LEADING_LABEL = re.compile(rf"^\s*(?:\*\*)?(?:answer|a|model|assistant)(?:\*\*)?\s*[:：]\s*", re.IGNORECASE)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def clean_answer(text: str, question: str) -> str:
    """Return only the model's reply to ``question`` from generated ``text``."""
    for marker in _MARKERS:
        position = text.find(marker)
        if position != -1:
            text = text[:position]
    text = _LEADING_LABEL.sub("", text)
    text = _strip_echo(text, question)
    text = _LEADING_LABEL.sub("", text)
    match = _INVENTED_TURN.search(text, 1)
    if match:
        text = text[:match.start()]
    repeat = _find_question(text, question)
    if repeat > 0:
        text = text[:repeat]
    return text.strip()


def _strip_echo(text: str, question: str) -> str:
    """Remove the question when the reply starts by repeating it."""
    stripped = text.lstrip()
    label = re.match(rf"^(?:\*\*)?(?:question|q|user)(?:\*\*)?\s*[:：]\s*", stripped, re.IGNORECASE)
    body = stripped[label.end():] if label else stripped
    if question.strip() and _normalize(body[:len(question) + 20]).startswith(_normalize(question)):
        # Walk the body until the normalized prefix covers the whole question.
        target = _normalize(question)
        for end in range(len(question.strip()), len(body) + 1):
            if _normalize(body[:end]) == target:
                return body[end:]
    return text


def _find_question(text: str, question: str) -> int:
    """Position where the reply repeats the question verbatim, or -1."""
    if len(question.strip()) < 8:
        return -1
    return text.casefold().find(question.strip().casefold())


@dataclass
class GeneratedAnswer:
    """A cleaned answer with how it was generated; ``error`` is set when generation failed."""

    answer: str
    raw: str = ""
    completion_tokens: int = 0
    finish_reason: str = ""
    seconds: float = 0.0
    error: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)


def choose_backend(config: EvaluateConfig) -> str:
    """Pick the generation backend for --model: ollama for 'ollama:NAME', llamacpp for a GGUF, else transformers."""
    model = config.model or ""
    if config.backend != "auto":
        return config.backend
    if model.startswith(OLLAMA_PREFIX):
        return "ollama"
    if model.lower().endswith(".gguf") and Path(model).expanduser().is_file():
        return "llamacpp"
    return "transformers"


def open_backend(config: EvaluateConfig) -> Any:
    """Create the generation backend for the model under evaluation."""
    from ..backends import get_backend
    from ..models import EMBEDDED_BASE

    name = choose_backend(config)
    model = config.model
    if name != "transformers" and config.adapter is not None:
        raise ConfigError(
            f"--adapter works with the transformers backend only, not {name}; export the adapter to a GGUF "
            "or Ollama model first, or evaluate it as an HF folder"
        )
    if name == "ollama":
        return get_backend("ollama", model=(model or "").removeprefix(OLLAMA_PREFIX))
    if name == "llamacpp":
        return get_backend("llamacpp", model=None if model == EMBEDDED_BASE else model)
    return get_backend("transformers", model=model, adapter=os.fspath(config.adapter) if config.adapter else None,
                       max_batch_size=config.batch_size)


def answer_questions(backend: Any, questions: Sequence[str], config: EvaluateConfig) -> list[GeneratedAnswer]:
    """Answer questions in one call where the backend batches, else one by one; a failure marks only its item."""
    requests = [
        GenerationRequest(messages=[{"role": "user", "content": question}], max_tokens=config.max_new_tokens,
                          temperature=config.temperature, seed=config.seed, timeout=config.timeout)
        for question in questions
    ]
    if len(requests) > 1 and not hasattr(backend, "generate_batch"):
        return [answer for request, question in zip(requests, questions)
                for answer in _generate_chunk(backend, [request], [question])]
    return _generate_chunk(backend, requests, questions)


def _generate_chunk(backend: Any, requests: Sequence[GenerationRequest],
                    questions: Sequence[str]) -> list[GeneratedAnswer]:
    started = time.perf_counter()
    try:
        if len(requests) > 1:
            results = backend.generate_batch(list(requests))
        else:
            results = [backend.generate(requests[0])]
    except RelearnError as exc:
        if len(requests) > 1:
            # Retry one by one so that one bad request does not fail its neighbours.
            return [answer for request, question in zip(requests, questions)
                    for answer in _generate_chunk(backend, [request], [question])]
        logger.warning("generation failed for %r: %s", questions[0][:80], exc)
        return [GeneratedAnswer(answer="", error=f"generation failed: {exc}")]
    elapsed = (time.perf_counter() - started) / len(requests)
    return [
        GeneratedAnswer(answer=clean_answer(result.text, question), raw=result.text,
                        completion_tokens=result.completion_tokens, finish_reason=result.finish_reason,
                        seconds=result.elapsed_seconds or elapsed, metadata=dict(result.metadata))
        for result, question in zip(results, questions)
    ]
