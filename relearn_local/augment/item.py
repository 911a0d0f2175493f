"""Augment one forget item: variants, answers, judge, leak guard, rewrite rounds and template fallback.

Calls per item, with the defaults: one writer call for the four variants, then
per round one writer call for the answers still missing and one judge call
for them. Template answers (see ``templates``) join the judge call from the
first round with ``fallback: early``, so an item whose writer fails still
finishes in three calls instead of running every round.

The writer sees only the questions, never the original answer, so it cannot
copy a private detail into a rewrite. The judge sees the original answer,
because it must tell whether a rewrite reveals any of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from ..backends.base import GenerationBackend
from ..data import QAPair
from ..errors import BackendError
from .answers import check_answer, question_vocabulary, write_answers
from .calls import CallSettings
from .config import AugmentConfig
from .judge import judge_candidates
from .leak_guard import LeakGuard
from .records import (SOURCE_TEMPLATE, SOURCE_WRITER, STATUS_FAILED, STATUS_OK, Candidate, ItemOutcome, ItemStats,
                      QuestionUnit)
from .templates import template_answers
from .topics import QuestionInfo, analyze
from .variants import build_questions, write_variants

logger = logging.getLogger(__name__)


@dataclass
class ItemContext:
    """Shared inputs of every item: the config, both backends and their request settings."""

    config: AugmentConfig
    writer: GenerationBackend
    judge: GenerationBackend
    writer_settings: CallSettings
    judge_settings: CallSettings


def process_item(index: int, pair: QAPair, context: ItemContext) -> ItemOutcome:
    """Augment one forget item; backend failures end the item as failed instead of raising."""
    stats = ItemStats()
    outcome = ItemOutcome(index=index, item_id=pair.id, status=STATUS_OK, stats=stats)
    info = analyze(pair.question)
    guard = LeakGuard(pair.question, pair.answer)
    config = context.config
    try:
        written = write_variants(context.writer, pair.question, context.writer_settings, config.variants_per_call,
                                 stats)
        outcome.questions = build_questions(pair.id, info, guard, written,
                                            config.allow_sensitive_spans_in_questions, stats)
        _answer_rounds(outcome, pair, info, guard, context)
    except BackendError as exc:
        outcome.status = STATUS_FAILED
        outcome.error = str(exc)
        logger.error("forget item %s failed: %s", pair.id, exc)
        return outcome
    judged = stats.verdicts + stats.judge_errors
    if judged and stats.verdicts == 0:
        outcome.status = STATUS_FAILED
        outcome.error = (f"the judge returned no usable verdict in {stats.rounds_used} round(s) "
                         f"({stats.judge_errors} answers unjudged)")
        logger.error("forget item %s failed: %s", pair.id, outcome.error)
    return outcome


def _answer_rounds(outcome: ItemOutcome, pair: QAPair, info: QuestionInfo, guard: LeakGuard,
                   context: ItemContext) -> None:
    config = context.config
    stats = outcome.stats
    pending: list[QuestionUnit] = list(outcome.questions)
    for round_number in range(1, config.rounds + 1):
        stats.rounds_used = round_number
        candidates = _round_candidates(outcome, pending, info, context, round_number)
        if candidates:
            judge_candidates(context.judge, pair.answer, candidates, context.judge_settings, config.verdicts_per_call,
                             stats)
        for candidate in candidates:
            _decide(candidate, guard, stats)
        accepted_now = _pick_accepted(candidates)
        outcome.accepted.extend(accepted_now.values())
        kept = {id(candidate) for candidate in accepted_now.values()}
        outcome.rejected.extend(candidate for candidate in candidates if id(candidate) not in kept)
        pending = [unit for unit in pending if unit.question_id not in accepted_now]
        if not pending:
            break
    outcome.accepted.sort(key=lambda candidate: int(candidate.question_id[1:]))


def _round_candidates(outcome: ItemOutcome, pending: Sequence[QuestionUnit], info: QuestionInfo,
                      context: ItemContext, round_number: int) -> list[Candidate]:
    """Return this round's candidates: the writer's answers that pass the form checks, plus templates when due."""
    config = context.config
    stats = outcome.stats
    written = write_answers(context.writer, pending, context.writer_settings.for_round(round_number),
                            config.answers_per_call, stats)
    earlier = [candidate.text for candidate in outcome.accepted]
    vocabulary = question_vocabulary(outcome.questions)
    candidates: list[Candidate] = []
    with_templates = config.fallback == "early" or (config.fallback == "last" and round_number == config.rounds)
    for unit in pending:
        text = written.get(unit.question_id)
        if text is not None:
            candidate = Candidate(unit.question_id, text, SOURCE_WRITER, round_number)
            problem = check_answer(text, unit, earlier, vocabulary)
            if problem is None:
                candidates.append(candidate)
                earlier.append(text)
            else:
                candidate.status, candidate.reason = "invalid", problem
                stats.invalid_answers += 1
                outcome.rejected.append(candidate)
        if with_templates:
            options = template_answers(info, unit.variant, f"{outcome.item_id}/{unit.question_id}")
            candidates.append(Candidate(unit.question_id, options[(round_number - 1) % len(options)],
                                        SOURCE_TEMPLATE, round_number))
    return candidates


def _decide(candidate: Candidate, guard: LeakGuard, stats: ItemStats) -> None:
    """Combine the judge's verdict with the leak guard: the guard's rejection wins however the judge voted."""
    result = guard.check(candidate.text)
    candidate.guard = result.to_dict()
    if not result.passed:
        stats.guard_rejections.update(result.kinds)
    verdict = candidate.verdict or {}
    if "error" in verdict:
        candidate.status, candidate.reason = "judge_error", verdict["error"]
        return
    if verdict.get("leaks") is False and result.passed:
        candidate.status = "accepted"
        # The judge saw the original answer and may quote it in its reason,
        # which is stored beside the training record.
        candidate.verdict = {**verdict, "reason": guard.redact(str(verdict.get("reason", "")))}
        return
    candidate.status = "rejected"
    if verdict.get("leaks") is False:
        stats.guard_overrules += 1
        candidate.reason = "leak guard: " + ", ".join(result.kinds)
    else:
        stats.judge_rejections += 1
        candidate.reason = "judge: " + str(verdict.get("reason", "leaks"))


def _pick_accepted(candidates: Sequence[Candidate]) -> dict[str, Candidate]:
    """Return one accepted candidate per question, the writer's before a template."""
    chosen: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.status != "accepted":
            continue
        current = chosen.get(candidate.question_id)
        if current is None or (current.source == SOURCE_TEMPLATE and candidate.source == SOURCE_WRITER):
            chosen[candidate.question_id] = candidate
    for candidate in candidates:
        if candidate.status == "accepted" and chosen.get(candidate.question_id) is not candidate:
            candidate.status, candidate.reason = "superseded", "another accepted answer was preferred"
    return chosen
