"""Retries with exponential backoff for requests to a generation server."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed request is tried again.

    ``retries`` counts extra attempts after the first; the wait before retry
    ``n`` (1-based) is ``backoff * 2 ** (n - 1)`` seconds, capped at ``max_backoff``.
    """

    retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0

    def delay(self, retry_number: int) -> float:
        return min(self.max_backoff, self.backoff * (2 ** (retry_number - 1)))


def call_with_retries(
    function: Callable[[], T],
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``function``; on an exception that ``is_transient`` accepts, wait and try again.

    The last exception is raised unchanged when every attempt fails, and
    at once when it is not transient (a 4xx reply, for example).
    """
    attempt = 0
    while True:
        try:
            return function()
        except Exception as exc:  # filtered by is_transient below
            if not is_transient(exc) or attempt >= policy.retries:
                raise
            attempt += 1
            delay = policy.delay(attempt)
            logger.warning("%s failed (%s); retry %d of %d in %.1f s", what, _describe(exc), attempt,
                           policy.retries, delay)
            sleep(delay)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
