"""The deterministic leak guard: rejects text that repeats a sensitive span of an original answer.

The judge is a language model and can be wrong; this check is not. It runs
after the judge on every answer (and on every question variant unless the user
opts out), and its rejection stands however the judge voted.

Spans taken from the original answer, each only when the question does not
already contain it:

- email addresses, and their local part on its own;
- phone numbers, compared by their digits, so "+1 555-0147" also matches "5550147";
- numbers and dates: every group of two or more digits, a single digit
  together with its neighbouring word ("type 1", "Apartment 4"), identifiers
  with digits ("UDS-40-77319"), and month names;
- street addresses (a number next to capitalised words);
- names: capitalised words and the parts of hyphenated names;
- details: other uncommon words (length 4 or more, not a function word and
  not a word any refusal would use, compared by Snowball stem), such as
  "diabetes" or "pharmacist"; and, for Chinese or Japanese text, every run of
  three characters.

The guard also rejects specifics that were never in the original (an
invented email, phone number, street address, date or long number), because
training on them teaches the model to produce such values when asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable

from .wordlists import FUNCTION_WORDS, GENERIC_WORDS, MONTHS

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
DIGIT_RUN = re.compile(r"\+?\d[\d ().-]*\d")
DIGIT_GROUP = re.compile(r"\d+")
TOKEN_WITH_DIGIT = re.compile(r"(?<![\w-])[\w-]*\d[\w-]*(?![\w-])")
WORD = re.compile(r"[^\W\d_][\w'’-]*")
CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]{3,}")
STREET = re.compile(
    r"\b\d{1,5}[A-Za-z]?,?\s+(?:[A-ZÀ-Þ][\w'’.-]*\s?){1,4}"
    r"|\b[A-ZÀ-Þ][\w'’-]*(?:\s+[A-ZÀ-Þ][\w'’-]*){0,2}\s+\d{1,5}[A-Za-z]?\b"
)
NUMERIC_DATE = re.compile(r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b")
# Phone numbers have at least this many digits; shorter runs count as numbers.
PHONE_DIGITS = 7
# A phone number shares its last digits with a shortened form; this many must match.
PHONE_SUFFIX_DIGITS = 6
POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    """A sensitive piece of an original answer; ``kind`` names the category."""

    kind: str
    text: str
    pattern: re.Pattern | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "text": self.text}


@dataclass
class GuardResult:
    """The guard's decision on one text: what leaked from the original and what was invented."""

    leaks: list[Span]
    invented: list[Span]
    spans_checked: int

    @property
    def passed(self) -> bool:
        return not self.leaks and not self.invented

    @property
    def kinds(self) -> list[str]:
        return sorted({span.kind for span in self.leaks} | {f"invented_{span.kind}" for span in self.invented})

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"passed": self.passed, "spans_checked": self.spans_checked}
        if self.leaks:
            result["leaks"] = [span.to_dict() for span in self.leaks]
        if self.invented:
            result["invented"] = [span.to_dict() for span in self.invented]
        return result


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Reduce a word to its English Snowball (Porter 2) stem, lower-cased, so that "lives" and "live" compare equal."""
    return _english_stemmer().stemWord(word.lower())


@lru_cache(maxsize=1)
def _english_stemmer() -> Any:
    # snowballstemmer rather than nltk: the same algorithm, without nltk's
    # several seconds of import time on every run.
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def _bounded(text: str) -> re.Pattern:
    """Match ``text`` case-insensitively as a whole token, with any run of spaces where it has spaces."""
    escaped = r"\s+".join(re.escape(part) for part in text.split())
    return re.compile(rf"(?<![\w@.]){escaped}(?![\w@]|\.\w)", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return [POSSESSIVE.sub("", match.group()) for match in WORD.finditer(text)]


def _question_vocabulary(question: str) -> tuple[set[str], set[str]]:
    """Return the lower-cased words (with hyphen parts) and the stems of a question."""
    words: set[str] = set()
    for word in _words(question):
        words.add(word.lower())
        words.update(part.lower() for part in re.split(r"[-'’]", word) if part)
    return words, {stem(word) for word in words}


def _email_spans(answer: str, question: str) -> list[Span]:
    spans = []
    for match in EMAIL.finditer(answer):
        address = match.group().rstrip(".")
        if address.lower() in question.lower():
            continue
        spans.append(Span("email", address, _bounded(address)))
        local = address.split("@", 1)[0]
        if len(local) >= 4 and local.lower() not in question.lower():
            spans.append(Span("email", local, _bounded(local)))
    return spans


def _phone_spans(answer: str, question: str) -> list[Span]:
    question_digits = {re.sub(r"\D", "", run) for run in DIGIT_RUN.findall(question)}
    spans = []
    for run in DIGIT_RUN.findall(EMAIL.sub(" ", answer)):
        digits = re.sub(r"\D", "", run)
        if len(digits) >= PHONE_DIGITS and digits not in question_digits:
            spans.append(Span("phone", run.strip(), None))
    return spans


def _number_spans(answer: str, question: str) -> list[Span]:
    question_groups = set(DIGIT_GROUP.findall(question))
    text = EMAIL.sub(" ", answer)
    spans: dict[str, Span] = {}
    for token in TOKEN_WITH_DIGIT.findall(text):
        if not token.isdigit() and token.lower() not in question.lower():
            spans.setdefault(token.lower(), Span("number", token, _bounded(token)))
    for match in DIGIT_GROUP.finditer(text):
        group = match.group()
        if group in question_groups:
            continue
        if len(group) >= 2:
            spans.setdefault(group, Span("number", group, re.compile(rf"(?<!\d){group}(?!\d)")))
            continue
        for phrase in _single_digit_phrases(text, match):
            if phrase.lower() not in question.lower():
                spans.setdefault(phrase.lower(), Span("number", phrase, _bounded(phrase)))
    return list(spans.values())


def _single_digit_phrases(text: str, match: re.Match) -> list[str]:
    """Return the digit with the word before it and with the word after it ("type 1", "1 diabetes")."""
    before = re.search(r"([^\W\d_][\w'’-]*)\s+$", text[: match.start()])
    after = re.match(r"\s+([^\W\d_][\w'’-]*)", text[match.end():])
    phrases = []
    if before and before.group(1).lower() not in FUNCTION_WORDS:
        phrases.append(f"{before.group(1)} {match.group()}")
    if after and after.group(1).lower() not in FUNCTION_WORDS:
        phrases.append(f"{match.group()} {after.group(1)}")
    return phrases


def _street_addresses(text: str) -> list[str]:
    """Return the street-address-like phrases of ``text``; a number beside a month name is a date, not a street."""
    found = []
    for match in STREET.finditer(text):
        phrase = match.group().strip(" ,")
        words = [word.strip(",.").lower() for word in phrase.split()]
        if len(words) >= 2 and not any(word in MONTHS for word in words):
            found.append(phrase)
    return found


def _street_spans(answer: str, question: str) -> list[Span]:
    return [
        Span("street_address", address, _bounded(address))
        for address in _street_addresses(EMAIL.sub(" ", answer))
        if address.lower() not in question.lower()
    ]


def _word_spans(answer: str, question: str) -> list[Span]:
    question_words, question_stems = _question_vocabulary(question)
    spans: dict[str, Span] = {}
    for word in _words(EMAIL.sub(" ", answer)):
        lower = word.lower()
        if lower in FUNCTION_WORDS or lower in question_words:
            continue
        if lower in MONTHS:
            # Case-sensitive, so that the verb "may" is not taken for the month.
            spans.setdefault(lower, Span("date", word, re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")))
            continue
        if lower in GENERIC_WORDS:
            continue
        if word[0].isupper():
            for part in [word, *re.split(r"[-'’]", word)]:
                if len(part) >= 2 and part.lower() not in question_words and part.lower() not in FUNCTION_WORDS:
                    spans.setdefault(part.lower(), Span("name", part, _bounded(part)))
            continue
        if len(word) >= 4 and stem(lower) not in question_stems:
            spans.setdefault("stem:" + stem(lower), Span("detail", word, None))
    return list(spans.values())


def _cjk_spans(answer: str, question: str) -> list[Span]:
    # NOTE: scripts without capitals or spaces give no names to find, so every
    # three-character run counts. That also rejects harmless reuse of common
    # words, which sends such items to template answers more often.
    spans: dict[str, Span] = {}
    for run in CJK_RUN.findall(answer):
        for start in range(len(run) - 2):
            piece = run[start:start + 3]
            if piece not in question:
                spans.setdefault(piece, Span("detail", piece, re.compile(re.escape(piece))))
    return list(spans.values())


def sensitive_spans(question: str, answer: str) -> list[Span]:
    """Collect the sensitive spans of ``answer`` that ``question`` does not already contain."""
    spans: list[Span] = []
    for collect in (_email_spans, _phone_spans, _number_spans, _street_spans, _word_spans, _cjk_spans):
        spans.extend(collect(answer, question))
    return spans


def invented_specifics(text: str) -> list[Span]:
    """Find emails, phone numbers, street addresses, dates and long numbers in ``text``."""
    found: list[Span] = [Span("email", match.group()) for match in EMAIL.finditer(text)]
    rest = EMAIL.sub(" ", text)
    for run in DIGIT_RUN.findall(rest):
        if len(re.sub(r"\D", "", run)) >= PHONE_DIGITS:
            found.append(Span("phone", run.strip()))
    found.extend(Span("date", match.group()) for match in NUMERIC_DATE.finditer(rest))
    found.extend(Span("street_address", address) for address in _street_addresses(rest))
    for group in DIGIT_GROUP.findall(rest):
        if len(group) >= 3:
            found.append(Span("number", group))
    for word in _words(rest):
        if word.lower() in MONTHS:
            day_or_year = re.search(rf"(\d{{1,4}}\s+{re.escape(word)}|{re.escape(word)}\s+\d{{1,4}})", rest)
            if day_or_year:
                found.append(Span("date", day_or_year.group()))
    unique: dict[tuple[str, str], Span] = {}
    for span in found:
        unique.setdefault((span.kind, span.text), span)
    return list(unique.values())


class LeakGuard:
    """Checks texts against the sensitive spans of one original question/answer pair."""

    def __init__(self, question: str, answer: str, extra_spans: Iterable[Span] = ()):
        self.question = question
        self.spans = [*sensitive_spans(question, answer), *extra_spans]
        self._phone_digits = [re.sub(r"\D", "", span.text) for span in self.spans if span.kind == "phone"]
        self._detail_stems = {stem(span.text): span for span in self.spans if span.kind == "detail" and span.pattern is None}

    def leaks(self, text: str) -> list[Span]:
        """Return the spans of the original answer that ``text`` contains."""
        found = [span for span in self.spans if span.pattern is not None and span.pattern.search(text)]
        found.extend(self._phone_leaks(text))
        for word in _words(text):
            span = self._detail_stems.get(stem(word))
            if span is not None and span not in found:
                found.append(span)
        return found

    def _phone_leaks(self, text: str) -> list[Span]:
        found = []
        for run in DIGIT_RUN.findall(text):
            digits = re.sub(r"\D", "", run)
            if len(digits) < PHONE_SUFFIX_DIGITS:
                continue
            for span_digits, span in zip(self._phone_digits, [s for s in self.spans if s.kind == "phone"]):
                if span_digits.endswith(digits) or digits.endswith(span_digits[-PHONE_SUFFIX_DIGITS:]):
                    found.append(span)
        return found

    def redact(self, text: str, mark: str = "[redacted]") -> str:
        """Replace every span of the original answer in ``text`` with ``mark``.

        Used on text that is stored but not trained on, such as the judge's
        reason, which may quote the private facts it was shown.
        """
        for span in self.spans:
            if span.pattern is not None:
                text = span.pattern.sub(mark, text)
        for run in DIGIT_RUN.findall(text):
            if self._phone_leaks(run):
                text = text.replace(run, mark)
        return WORD.sub(lambda match: mark if stem(POSSESSIVE.sub("", match.group())) in self._detail_stems
                        else match.group(), text)

    def check(self, text: str, allow_invented: bool = False) -> GuardResult:
        """Decide on ``text``: it passes when it contains no span of the original and, unless allowed, no invented specific."""
        invented = [] if allow_invented else [
            span for span in invented_specifics(text)
            if span.text.lower() not in self.question.lower()
        ]
        return GuardResult(leaks=self.leaks(text), invented=invented, spans_checked=len(self.spans))
