"""Diversification of the augmented forget set: sentence completions and mixed-in generic pairs."""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..data import QAPair
from .config import COMPLETION, MIX_IN
from .leak_guard import LeakGuard
from .records import ItemOutcome

logger = logging.getLogger(__name__)

# Answers shorter than this many words are too short to split into a prompt and a continuation.
MIN_COMPLETION_WORDS = 6
MIX_IN_ITEM_ID = "mix-in"


def split_for_completion(answer: str) -> tuple[str, str] | None:
    """Split an answer into a prefix to continue and its continuation, at a clause or word boundary near the middle.

    Returns None for answers too short to split.
    """
    words = answer.split()
    if len(words) < MIN_COMPLETION_WORDS:
        return None
    for match in re.finditer(r"[,;:]\s", answer):
        prefix_words = len(answer[: match.start() + 1].split())
        if 3 <= prefix_words <= len(words) - 3:
            return answer[: match.start() + 1], answer[match.end():]
    middle = len(words) // 2
    return " ".join(words[:middle]), " ".join(words[middle:])


def completion_records(outcome: ItemOutcome, per_item: int) -> list[dict[str, Any]]:
    """Make up to ``per_item`` sentence-completion records from the item's accepted answers, original question first."""
    rows = []
    for candidate in outcome.accepted:
        if len(rows) >= per_item:
            break
        split = split_for_completion(candidate.text)
        if split is None:
            continue
        prefix, rest = split
        rows.append({
            "id": f"{outcome.item_id}/c{len(rows)}",
            "item_id": outcome.item_id,
            "question_id": candidate.question_id,
            "variant": COMPLETION,
            "question": prefix,
            "answer": rest,
            "verdict": None,
            "guard": candidate.guard,
            "rounds": candidate.round,
            "provenance": {"question": "completion", "answer": candidate.source},
        })
    return rows


@dataclass
class MixInResult:
    records: list[dict[str, Any]]
    dropped: int
    requested: int
    available: int


def mix_in_records(pairs: Sequence[QAPair], ratio: float, forget_records: int, seed: int,
                   guards: Sequence[LeakGuard]) -> MixInResult:
    """Pick ``round(ratio * forget_records)`` generic pairs at random (seeded), dropping any that repeat a forget span."""
    requested = round(ratio * forget_records)
    usable = []
    dropped = 0
    for pair in pairs:
        text = f"{pair.question}\n{pair.answer}"
        if any(guard.leaks(text) for guard in guards):
            dropped += 1
            continue
        usable.append(pair)
    if dropped:
        logger.warning("dropped %d mix-in pairs that contain details of the forget set", dropped)
    if requested > len(usable):
        logger.warning("the mix-in ratio asks for %d pairs but only %d are usable; using all of them",
                       requested, len(usable))
    chosen = random.Random(seed).sample(usable, k=min(requested, len(usable)))
    records = [{
        "id": f"{MIX_IN_ITEM_ID}/{pair.id}",
        "item_id": MIX_IN_ITEM_ID,
        "question_id": pair.id,
        "variant": MIX_IN,
        "question": pair.question,
        "answer": pair.answer,
        "verdict": None,
        "guard": None,
        "rounds": 0,
        "provenance": {"question": "mix_in", "answer": "mix_in"},
    } for pair in chosen]
    return MixInResult(records=records, dropped=dropped, requested=requested, available=len(usable))
