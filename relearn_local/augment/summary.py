"""summary.json: what the run produced, what failed, and whether train can rely on it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .config import COMPLETION, MIX_IN, RECORD_VARIANTS
from .records import SOURCE_TEMPLATE, SOURCE_WRITER, ItemOutcome, ItemStats

# Above this share of template answers the summary warns that the writer model is too weak.
TEMPLATE_WARNING_SHARE = 0.5


@dataclass
class AugmentResult:
    """The outcome of ``run_augment``: where the files are and the summary they hold."""

    out: Path
    augmented_path: Optional[Path]
    summary_path: Path
    summary: dict[str, Any]

    @property
    def complete(self) -> bool:
        return bool(self.summary["complete"])

    @property
    def failed_items(self) -> list[str]:
        return list(self.summary["failed_items"])

    @property
    def exit_code(self) -> int:
        """0 when every item was augmented and records were written, 1 otherwise."""
        return 0 if self.complete and self.summary["records"] > 0 else 1


def per_variant_counts(outcomes: Sequence[ItemOutcome], records: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Count questions, accepted and rejected answers, and template use per variant type."""
    counts = {variant: Counter() for variant in RECORD_VARIANTS}
    for outcome in outcomes:
        if not outcome.ok:
            continue
        accepted = {candidate.question_id: candidate for candidate in outcome.accepted}
        for unit in outcome.questions:
            row = counts[unit.variant]
            row["questions"] += 1
            row["template_questions"] += int(unit.source == SOURCE_TEMPLATE)
            candidate = accepted.get(unit.question_id)
            if candidate is None:
                row["rejected"] += 1
                continue
            row["accepted"] += 1
            row["writer_answers" if candidate.source == SOURCE_WRITER else "template_answers"] += 1
    for record in records:
        if record["variant"] in (COMPLETION, MIX_IN):
            counts[record["variant"]]["accepted"] += 1
    keys = ("questions", "accepted", "rejected", "writer_answers", "template_answers", "template_questions")
    return {variant: {key: row.get(key, 0) for key in keys} for variant, row in counts.items()}


def build_summary(outcomes: Sequence[ItemOutcome], total_items: int, records: Sequence[dict[str, Any]],
                  wall_seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    """Assemble summary.json from the item outcomes; ``complete`` is true only when every item was augmented."""
    totals = ItemStats()
    for outcome in outcomes:
        totals.add(outcome.stats)
    ok = [outcome for outcome in outcomes if outcome.ok]
    failed = [outcome for outcome in outcomes if not outcome.ok]
    missing = total_items - len(outcomes)
    without_answer = [outcome.item_id for outcome in ok if not outcome.accepted]
    answers = Counter(candidate.source for outcome in ok for candidate in outcome.accepted)
    questions = Counter(unit.source for outcome in ok for unit in outcome.questions if unit.variant != "original")
    summary: dict[str, Any] = {
        "complete": not failed and missing == 0,
        "items": total_items,
        "items_augmented": len(ok),
        "items_with_accepted_answer": len(ok) - len(without_answer),
        "items_without_accepted_answer": without_answer,
        "failed_items": [outcome.item_id for outcome in failed],
        "failures": {outcome.item_id: outcome.error for outcome in failed},
        "records": len(records),
        "per_variant": per_variant_counts(outcomes, records),
        "answers": {"writer": answers[SOURCE_WRITER], "template": answers[SOURCE_TEMPLATE]},
        "variants": {"writer": questions[SOURCE_WRITER], "template": questions[SOURCE_TEMPLATE]},
        "guard_overrules": totals.guard_overrules,
        "guard_rejections": dict(sorted(totals.guard_rejections.items())),
        "judge_rejections": totals.judge_rejections,
        "judge_errors": totals.judge_errors,
        "writer_errors": totals.writer_errors,
        "unusable_replies": totals.unusable_replies,
        "invalid_answers": totals.invalid_answers,
        "llm_calls": totals.llm_calls,
        "llm_calls_per_item": round(totals.llm_calls / len(outcomes), 3) if outcomes else 0.0,
        "cached_replies": totals.cached_replies,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "wall_seconds": round(wall_seconds, 2),
        "items_per_minute": round(len(outcomes) / wall_seconds * 60, 3) if wall_seconds > 0 else None,
        **extra,
    }
    summary["warnings"] = _warnings(summary)
    return summary


def _warnings(summary: dict[str, Any]) -> list[str]:
    warnings = []
    if summary["failed_items"]:
        warnings.append(
            f"{len(summary['failed_items'])} of {summary['items']} forget items failed; the augmented forget set is "
            "incomplete, and rerunning with --force retries them (cached replies are reused)"
        )
    without = summary["items_without_accepted_answer"]
    if without:
        warnings.append(
            f"{len(without)} of {summary['items_augmented']} augmented forget items have no accepted answer, so "
            "train cannot teach them a harmless answer; use a stronger --model or --judge, or more --rounds"
        )
    accepted = summary["answers"]["writer"] + summary["answers"]["template"]
    if accepted and summary["answers"]["template"] / accepted > TEMPLATE_WARNING_SHARE:
        warnings.append(
            f"{summary['answers']['template']} of {accepted} accepted answers are templates because the writer's "
            "answers failed; a stronger --model gives more varied training data"
        )
    return warnings
