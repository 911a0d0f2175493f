"""What a forget question asks about (its topic) and whom (the subject's name), from the text alone.

Templates, variant checks and fallback answers rely on this. It works on
English questions; for others, no topic is found and the subject becomes
"this person".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .wordlists import FUNCTION_WORDS


@dataclass(frozen=True)
class Topic:
    """A kind of private fact.

    ``attribute`` is the noun phrase templates use ("home address");
    ``single`` names one instance of it ("identification number").
    """

    key: str
    attribute: str
    pattern: re.Pattern
    single: str


def _topic(key: str, attribute: str, pattern: str, single: str | None = None) -> Topic:
    return Topic(key, attribute, re.compile(pattern, re.IGNORECASE), single or attribute)


# Order matters: the first topics win when a question matches several words
# ("email address" is email, not a home address).
TOPICS: tuple[Topic, ...] = (
    _topic("email", "email address", r"\be-?mail"),
    _topic("phone", "phone number", r"\b(phone|mobile|cell|telephone)"),
    _topic("identifier", "identification numbers",
           r"\b(passport|tax|identification|id number|social security|employee number|licen[cs]e|permit|insurance number)",
           "identification number"),
    _topic("finance", "bank details", r"\b(bank|account|salary|income|credit card|iban|savings)", "bank account number"),
    _topic("contact", "contact details", r"\b(contact|reach)\b", "phone number or email address"),
    _topic("address", "home address",
           r"(?<!mail )(?<!mail-)\baddress|\b(live|lives|living|reside|resides|home|stay|stays)\b"),
    _topic("birth", "date of birth", r"\b(born|birth|birthday|how old|age)\b"),
    _topic("parents", "parents", r"\b(parents?|mother|father|mom|dad)\b"),
    _topic("partner", "partner", r"\b(partner|married|wife|husband|spouse|girlfriend|boyfriend)\b"),
    _topic("children", "children", r"\b(child|children|sons?|daughters?|kids?)\b"),
    _topic("health", "health", r"\b(health|condition|illness|ill|disease|diagnos\w*|medical|treated|sick|suffers?)\b"),
)
GENERIC_TOPIC = Topic("personal", "personal details", re.compile(r"$^"), "personal detail")
# Relations that a reverse question turns into each other.
RELATED_TOPICS = {"parents": {"children"}, "children": {"parents"}, "contact": {"email", "phone"},
                  "email": {"contact"}, "phone": {"contact"}}

QUESTION_WORDS = frozenset("what who whom whose where when which why how is are was were does do did can could "
                           "would will should has have tell give please".split())
_NAME_TOKEN = re.compile(r"[^\W\d_][\w'’.-]*")
_POSSESSIVE = re.compile(r"['’]s?$")


def detect_topics(question: str) -> list[Topic]:
    """Return the topics a question asks about, in table order; empty when none is recognised."""
    return [topic for topic in TOPICS if topic.pattern.search(question)]


def subject_name(question: str) -> str | None:
    """Return the longest run of capitalised words in a question (without a possessive), or None.

    The question word that opens a sentence is not part of a name.
    """
    best: list[str] = []
    run: list[str] = []
    for index, match in enumerate(_NAME_TOKEN.finditer(question)):
        token = match.group()
        bare = _POSSESSIVE.sub("", token).rstrip(".")
        starts_name = bare[:1].isupper() and not (index == 0 and bare.lower() in QUESTION_WORDS)
        if starts_name and bare.lower() not in FUNCTION_WORDS:
            run.append(bare)
            if bare != token.rstrip("."):
                best = max(best, run, key=len)
                run = []
        else:
            best = max(best, run, key=len)
            run = []
    best = max(best, run, key=len)
    return " ".join(best) if best else None


@dataclass(frozen=True)
class QuestionInfo:
    """Facts about a forget question that the templates use."""

    question: str
    topics: tuple[Topic, ...]
    name: str | None

    @property
    def topic(self) -> Topic:
        return self.topics[0] if self.topics else GENERIC_TOPIC

    @property
    def attribute(self) -> str:
        return " and ".join(topic.attribute for topic in self.topics[:2]) if self.topics else GENERIC_TOPIC.attribute

    @property
    def subject(self) -> str:
        return self.name or "this person"

    @property
    def possessive(self) -> str:
        return f"{self.subject}'s"


def analyze(question: str) -> QuestionInfo:
    return QuestionInfo(question, tuple(detect_topics(question)), subject_name(question))


def topics_compatible(original: QuestionInfo, text: str) -> bool:
    """Tell whether ``text`` (a variant or an answer) stays on the original topic, a related one, or none recognisable."""
    found = {topic.key for topic in detect_topics(text)}
    if not found or not original.topics:
        return True
    allowed = {topic.key for topic in original.topics}
    for key in list(allowed):
        allowed |= RELATED_TOPICS.get(key, set())
    return bool(found & allowed)
