"""Results of augmenting one forget item: its questions, answer candidates, counters and records."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

SOURCE_ORIGINAL = "original"
SOURCE_WRITER = "writer"
SOURCE_TEMPLATE = "template"

STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass
class QuestionUnit:
    """One question of a forget item: the original (``q0``) or a variant (``q1``..``q4``)."""

    question_id: str
    variant: str
    text: str
    source: str


@dataclass
class Candidate:
    """An answer proposed for one question, with the judge's verdict and the leak guard's decision.

    ``status`` is "accepted", "rejected" (judge or guard), "invalid" (failed
    the format checks before judging) or "judge_error" (no usable verdict).
    """

    question_id: str
    text: str
    source: str
    round: int
    verdict: Optional[dict[str, Any]] = None
    guard: Optional[dict[str, Any]] = None
    status: str = "pending"
    reason: str = ""


@dataclass
class ItemStats:
    """Counters of one forget item; summed over items for summary.json."""

    llm_calls: int = 0
    cached_replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unusable_replies: int = 0
    writer_errors: int = 0
    judge_errors: int = 0
    verdicts: int = 0
    guard_overrules: int = 0
    guard_rejections: Counter = field(default_factory=Counter)
    judge_rejections: int = 0
    invalid_answers: int = 0
    template_variants: int = 0
    rejected_variants: int = 0
    rounds_used: int = 0

    def record_call(self, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        self.llm_calls += 1
        self.cached_replies += int(cached)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def add(self, other: "ItemStats") -> None:
        for item in dataclasses.fields(self):
            if item.name == "guard_rejections":
                self.guard_rejections.update(other.guard_rejections)
            elif item.name == "rounds_used":
                self.rounds_used = max(self.rounds_used, other.rounds_used)
            else:
                setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["guard_rejections"] = dict(sorted(self.guard_rejections.items()))
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ItemStats":
        known = {item.name for item in dataclasses.fields(cls)}
        stats = cls(**{key: value for key, value in values.items() if key in known and key != "guard_rejections"})
        stats.guard_rejections = Counter(values.get("guard_rejections", {}))
        return stats


@dataclass
class ItemOutcome:
    """The result of augmenting one forget item; saved per item so that an interrupted run resumes."""

    index: int
    item_id: str
    status: str
    error: Optional[str] = None
    questions: list[QuestionUnit] = field(default_factory=list)
    accepted: list[Candidate] = field(default_factory=list)
    rejected: list[Candidate] = field(default_factory=list)
    stats: ItemStats = field(default_factory=ItemStats)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def unit(self, question_id: str) -> QuestionUnit:
        return next(unit for unit in self.questions if unit.question_id == question_id)

    def records(self, judge_model: str | None = None) -> list[dict[str, Any]]:
        """Return the training records of the accepted answers, in question order."""
        by_question = {candidate.question_id: candidate for candidate in self.accepted}
        rows = []
        for unit in self.questions:
            candidate = by_question.get(unit.question_id)
            if candidate is None:
                continue
            verdict = dict(candidate.verdict or {})
            if judge_model is not None:
                verdict["judge"] = judge_model
            rows.append({
                "id": f"{self.item_id}/{unit.question_id}",
                "item_id": self.item_id,
                "question_id": unit.question_id,
                "variant": unit.variant,
                "question": unit.text,
                "answer": candidate.text,
                "verdict": verdict,
                "guard": candidate.guard,
                "rounds": candidate.round,
                "provenance": {"question": unit.source, "answer": candidate.source},
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["stats"] = self.stats.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ItemOutcome":
        return cls(
            index=values["index"],
            item_id=values["item_id"],
            status=values["status"],
            error=values.get("error"),
            questions=[QuestionUnit(**unit) for unit in values.get("questions", [])],
            accepted=[Candidate(**candidate) for candidate in values.get("accepted", [])],
            rejected=[Candidate(**candidate) for candidate in values.get("rejected", [])],
            stats=ItemStats.from_dict(values.get("stats", {})),
        )
