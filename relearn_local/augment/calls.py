"""One structured request to the writer or the judge: ask, parse, validate, and retry an unusable reply."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence

from ..backends.base import GenerationBackend, GenerationRequest
from ..backends.replies import ReplyError, parse_reply
from .records import ItemStats

logger = logging.getLogger(__name__)

# A retry after an unusable reply samples at this temperature or above,
# because at temperature 0 the same prompt returns the same reply.
RETRY_TEMPERATURE = 0.7
# A reply cut off by the token limit is retried with a larger limit, up to this multiple.
MAX_TOKEN_GROWTH = 4


@dataclass(frozen=True)
class CallSettings:
    """Sampling and limits of one kind of request."""

    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 512
    timeout: Optional[float] = None
    parse_retries: int = 1

    def for_round(self, round_number: int) -> "CallSettings":
        """Return the settings of rewrite round ``round_number``: the first round asks as configured,
        later rounds with another seed and at least RETRY_TEMPERATURE, so that a rewrite can differ."""
        if round_number <= 1:
            return self
        return replace(self, seed=self.seed + 1000 * (round_number - 1),
                       temperature=max(self.temperature, RETRY_TEMPERATURE))


def ask_json(backend: GenerationBackend, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any],
             settings: CallSettings, stats: ItemStats, purpose: str) -> dict[str, Any]:
    """Send one structured request and return the validated JSON object of the reply.

    An unusable reply (not JSON, cut off, missing a required field) is asked
    again up to ``settings.parse_retries`` times with another seed. After that
    ReplyError is raised. Backend errors (timeouts, an unreachable server)
    propagate unchanged.
    """
    max_tokens = settings.max_tokens
    last_error: ReplyError | None = None
    for attempt in range(settings.parse_retries + 1):
        temperature = settings.temperature if attempt == 0 else max(settings.temperature, RETRY_TEMPERATURE)
        request = GenerationRequest(
            messages=[dict(message) for message in messages],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=settings.seed + attempt,
            schema=schema,
            timeout=settings.timeout,
        )
        result = backend.generate(request)
        stats.record_call(result.prompt_tokens, result.completion_tokens, result.cached)
        try:
            return parse_reply(result.text, schema)
        except ReplyError as exc:
            stats.unusable_replies += 1
            last_error = exc
            logger.info("unusable %s reply (try %d of %d): %s", purpose, attempt + 1, settings.parse_retries + 1, exc)
            if result.finish_reason == "length":
                max_tokens = min(max_tokens * 2, settings.max_tokens * MAX_TOKEN_GROWTH)
    assert last_error is not None
    raise last_error
