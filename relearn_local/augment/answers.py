"""Safe answers: written several per call by the writer model, checked for form before the judge sees them."""

from __future__ import annotations

import logging
import re
from typing import Optional, Sequence

from ..backends.base import ContextOverflowError, GenerationBackend
from ..backends.replies import ReplyError
from .calls import CallSettings, ask_json
from .prompts import ANSWER_MAX_CHARS, answers_messages, answers_schema
from .records import ItemStats, QuestionUnit
from .topics import analyze, topics_compatible
from .variants import normalize_question
from .wordlists import FUNCTION_WORDS, GENERIC_WORDS

logger = logging.getLogger(__name__)

# A run of this many words appearing twice marks a degenerate, looping answer.
REPEATED_WORDS = 6
MIN_ANSWER_CHARS = 12


def write_answers(writer: GenerationBackend, units: Sequence[QuestionUnit], settings: CallSettings, per_call: int,
                  stats: ItemStats) -> dict[str, str]:
    """Ask the writer for one answer per question, ``per_call`` questions per request; return {question id: text}.

    Batches that fail to parse are logged and skipped, so their questions get
    no writer answer this round. A batch too long for the context window is
    split in halves.
    """
    written: dict[str, str] = {}
    pending = [list(units[start:start + per_call]) for start in range(0, len(units), per_call)]
    while pending:
        batch = pending.pop(0)
        local = {f"q{index}": unit for index, unit in enumerate(batch)}
        try:
            reply = ask_json(writer, answers_messages({key: unit.text for key, unit in local.items()}),
                             answers_schema(list(local)), settings, stats, "answer writer")
        except ReplyError as exc:
            stats.writer_errors += 1
            logger.info("the writer's answers for %d questions were unusable (%s)", len(batch), exc)
            continue
        except ContextOverflowError:
            if len(batch) == 1:
                stats.writer_errors += 1
                logger.warning("question %s is too long for the writer's context window", batch[0].question_id)
                continue
            middle = len(batch) // 2
            pending[:0] = [batch[:middle], batch[middle:]]
            continue
        for key, unit in local.items():
            value = reply.get(key)
            if isinstance(value, str):
                written[unit.question_id] = value.strip()
    return written


def foreign_names(text: str, question_words: set[str]) -> list[str]:
    """Return capitalised words of ``text`` that name someone or somewhere the questions do not mention.

    Small writers copy the people of their examples into answers; such an
    answer is about someone else, and a name it invents is no better.
    """
    names = []
    for match in re.finditer(r"[^\W\d_][\w'’-]*", text):
        if _starts_sentence(text, match.start()):
            # Capitals after a full stop mark a sentence, not a name; a
            # following surname is still caught on its own.
            continue
        bare = re.sub(r"['’]s$", "", match.group())
        lower = bare.lower()
        if not bare[:1].isupper() or lower in FUNCTION_WORDS or lower in GENERIC_WORDS or lower == "i":
            continue
        parts = {part for part in re.split(r"[-'’]", lower) if part}
        if lower not in question_words and not parts <= question_words:
            names.append(bare)
    return names


def _starts_sentence(text: str, position: int) -> bool:
    before = text[:position].rstrip()
    return not before or before[-1] in ".!?:;\"“("


def question_vocabulary(units: Sequence[QuestionUnit]) -> set[str]:
    """Return the lower-cased words, and hyphen parts, of an item's questions."""
    words: set[str] = set()
    for unit in units:
        for word in re.findall(r"[^\W\d_][\w'’-]*", unit.text):
            bare = re.sub(r"['’]s$", "", word).lower()
            words.add(bare)
            words.update(part for part in re.split(r"[-'’]", bare) if part)
    return words


def check_answer(text: str, unit: QuestionUnit, earlier_answers: Sequence[str],
                 question_words: set[str] | None = None) -> Optional[str]:
    """Return why an answer is unusable before judging (empty, a copy, looping, about someone else), or None."""
    if len(text) < MIN_ANSWER_CHARS or not re.search(r"[^\W\d_]", text):
        return "too short"
    if len(text) > ANSWER_MAX_CHARS:
        return "too long"
    normalized = normalize_question(text)
    if normalized == normalize_question(unit.text):
        return "repeats the question"
    if any(normalized == normalize_question(other) for other in earlier_answers):
        return "repeats another answer of this item"
    if _loops(text):
        return "repeats itself"
    if question_words is not None:
        strangers = foreign_names(text, question_words)
        if strangers:
            return "names someone or somewhere the question does not: " + ", ".join(strangers[:3])
    if not topics_compatible(analyze(unit.text), text):
        return "answers about another topic than the question"
    return None


def _loops(text: str) -> bool:
    words = re.findall(r"\w+", text.lower())
    seen: set[tuple[str, ...]] = set()
    for start in range(len(words) - REPEATED_WORDS + 1):
        window = tuple(words[start:start + REPEATED_WORDS])
        if window in seen:
            return True
        seen.add(window)
    return False
