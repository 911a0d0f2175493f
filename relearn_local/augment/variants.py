"""Question variants of a forget item: written by the writer model in one call, checked, templated where they fail."""

from __future__ import annotations

import logging
import re
from typing import Optional

from ..backends.base import GenerationBackend
from ..backends.replies import ReplyError
from .calls import CallSettings, ask_json
from .config import ORIGINAL, VARIANT_TYPES
from .leak_guard import LeakGuard
from .prompts import VARIANT_MAX_CHARS, variants_messages, variants_schema
from .records import SOURCE_ORIGINAL, SOURCE_TEMPLATE, SOURCE_WRITER, ItemStats, QuestionUnit
from .templates import template_questions
from .topics import QuestionInfo, topics_compatible

logger = logging.getLogger(__name__)

# A variant longer than this multiple of the original question has wandered off.
MAX_LENGTH_RATIO = 4


def normalize_question(text: str) -> str:
    """Lower-case letters and digits only, for telling near-identical questions apart."""
    return re.sub(r"[\W_]+", "", text.lower())


def check_variant(text: str, variant: str, info: QuestionInfo, guard: LeakGuard, seen: set[str],
                  allow_sensitive_spans: bool) -> Optional[str]:
    """Return why a variant question is unusable, or None when it is usable."""
    stripped = text.strip()
    if len(stripped) < 8:
        return "too short"
    if len(stripped) > max(VARIANT_MAX_CHARS, MAX_LENGTH_RATIO * len(info.question)):
        return "too long"
    normalized = normalize_question(stripped)
    if normalized in seen:
        return "repeats the original question or another variant"
    if info.name and not _mentions_subject(stripped, info.name):
        return f"does not name {info.name}"
    # Typos in a noise variant can turn "email address" into "emal address",
    # which reads as a home address, so noise is not held to the topic.
    if variant != "noise" and not topics_compatible(info, stripped):
        return "asks about another topic"
    if not allow_sensitive_spans:
        result = guard.check(stripped)
        if not result.passed:
            return "contains sensitive details: " + ", ".join(result.kinds)
    return None


def _mentions_subject(text: str, name: str) -> bool:
    lowered = text.lower()
    parts = [part for part in re.split(r"[\s-]+", name.lower()) if len(part) >= 3]
    return any(part in lowered for part in parts) if parts else name.lower() in lowered


def write_variants(writer: GenerationBackend, question: str, settings: CallSettings, per_call: int,
                   stats: ItemStats) -> dict[str, str]:
    """Ask the writer for the four variants (in one call, or one call per variant); return what it wrote."""
    groups = [list(VARIANT_TYPES)] if per_call >= len(VARIANT_TYPES) else [[name] for name in VARIANT_TYPES]
    written: dict[str, str] = {}
    for types in groups:
        try:
            reply = ask_json(writer, variants_messages(question, types), variants_schema(types), settings, stats,
                             "variant writer")
        except ReplyError as exc:
            stats.writer_errors += 1
            logger.info("the writer's variants for %r were unusable (%s); using templates", question, exc)
            continue
        written.update({name: value for name, value in reply.items() if name in types and isinstance(value, str)})
    return written


def build_questions(item_key: str, info: QuestionInfo, guard: LeakGuard, written: dict[str, str],
                    allow_sensitive_spans: bool, stats: ItemStats) -> list[QuestionUnit]:
    """Return the original question and one checked variant per type, templated where the writer's failed."""
    units = [QuestionUnit("q0", ORIGINAL, info.question, SOURCE_ORIGINAL)]
    seen = {normalize_question(info.question)}
    for number, variant in enumerate(VARIANT_TYPES, start=1):
        text = written.get(variant, "")
        problem = check_variant(text, variant, info, guard, seen, allow_sensitive_spans) if text else "missing"
        source = SOURCE_WRITER
        if problem is not None:
            stats.rejected_variants += int(bool(text))
            logger.info("item %s: %s variant %r rejected (%s)", item_key, variant, text[:80], problem)
            text = _first_usable_template(item_key, variant, info, guard, seen, allow_sensitive_spans)
            source = SOURCE_TEMPLATE
            if text is None:
                logger.warning("item %s: no usable %s variant; the item has one question fewer", item_key, variant)
                continue
            stats.template_variants += 1
        seen.add(normalize_question(text))
        units.append(QuestionUnit(f"q{number}", variant, text.strip(), source))
    return units


def _first_usable_template(item_key: str, variant: str, info: QuestionInfo, guard: LeakGuard, seen: set[str],
                           allow_sensitive_spans: bool) -> Optional[str]:
    for candidate in template_questions(variant, info, f"{item_key}/{variant}"):
        if check_variant(candidate, variant, info, guard, seen, allow_sensitive_spans) is None:
            return candidate
    return None
