"""Progress events: the library reports long work through a callback; only the CLI draws bars."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class ProgressEvent:
    """One update of a long task.

    ``task`` names the work ("convert", "augment", "train"); ``completed`` and
    ``total`` count its units (``total`` is None when unknown); ``metrics``
    carries numbers worth showing beside the bar (loss, tokens/s). ``done``
    marks the last event of the task.
    """

    task: str
    completed: float
    total: float | None = None
    description: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    done: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


def report(callback: Optional[ProgressCallback], task: str, completed: float, total: float | None = None,
           description: str | None = None, done: bool = False, **metrics: Any) -> None:
    """Send one event to ``callback`` when there is one."""
    if callback is not None:
        callback(ProgressEvent(task, completed, total, description, dict(metrics), done))
