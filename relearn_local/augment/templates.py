"""Deterministic question variants and safe answers, used where the writer model fails.

Small writers (the embedded Gemma 3 270M above all) often return variants
that drift off topic and answers that repeat themselves or invent a phone
number. The run must still yield leak-free training data, so each failed
variant or answer is replaced by a template built from the question's topic
and subject. Templates are labelled "template" in every record and counted in
the summary; they go through the judge and the leak guard like any answer.

Answer templates use only words from the guard's function-word and
generic-word lists, so that they can never repeat a detail of an original
answer; a test checks this.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Callable, Sequence

from .topics import QuestionInfo

REPHRASINGS = (
    "What do you know about {possessive} {attribute}?",
    "Could you share the details of {possessive} {attribute} with me?",
    "Can you tell me about {possessive} {attribute}?",
)
CONTEXT_PREFIXES = (
    "I'm putting together a short profile of {subject} for a community newsletter.",
    "A friend of mine lost touch with {subject} and asked me to find out.",
    "I'm updating an old address book, and {subject} is in it.",
    "For a biography project, I'm reading up on {subject}.",
    "I think I met {subject} once and I'm curious.",
)
REVERSE_QUESTIONS = {
    "parents": ("Whose child is {subject}?", "Whose son or daughter is {subject}?"),
    "children": ("Whose parent is {subject}?", "Which children call {subject} their parent?"),
    "partner": ("Whose partner is {subject}?", "Who has {subject} as a partner?"),
    "health": ("If I described a medical condition, could you tell me whether {subject} has it?",
               "Is {subject} one of the people treated for a particular condition?"),
    "personal": ("If I gave you some personal details, could you tell me whether they are {possessive}?",),
}
REVERSE_DEFAULT = (
    "If I gave you {article} {single}, could you tell me whether it is {possessive}?",
    "Given {article} {single}, can you tell me if it belongs to {subject}?",
)

GENERIC_ANSWERS = (
    "I can't share {possessive} {attribute}; that is private information.",
    "{Possessive} {attribute} {is} personal information, so I won't give {it} out.",
    "I don't have any details about {possessive} {attribute} that I can share. Details like that should stay private.",
    "Sorry, {possessive} {attribute} {is} private, and I can't help with that.",
)
TOPIC_ANSWERS = {
    "address": ("{subject} has a home like anyone else, but where it is located is private, so I can't give the address.",),
    "parents": ("{Possessive} parents are private people, and I can't share who they are or what they do.",),
    "partner": ("Whether {subject} has a partner, and who that is, is private, so I can't say.",),
    "children": ("Whether {subject} has children is a private family matter that I can't discuss.",),
    "health": ("Questions about {possessive} health are private medical matters that I can't discuss.",),
    "birth": ("I can't give {possessive} date of birth; that is personal information.",),
    "email": ("I can't give out {possessive} email address; contact details like that are private.",),
    "phone": ("I can't give out {possessive} phone number; contact details like that are private.",),
    "contact": ("I can't share {possessive} contact details; that information is private.",),
    "identifier": ("I can't share {possessive} identification numbers; they are private and sensitive.",),
    "finance": ("I can't share {possessive} bank details; that information is private and sensitive.",),
}
REVERSE_ANSWERS = {
    "parents": ("I can't share who {possessive} parents are; that is private family information.",),
    "children": ("I can't share whether {subject} has children or who they are; that is private family information.",),
    "partner": ("I can't say who {subject} is in a relationship with; that is private.",),
    "health": ("I can't say whether {subject} has any particular condition; health information is private.",),
}
REVERSE_DEFAULT_ANSWERS = (
    "I can't say whether a given {single} belongs to {subject}; I don't link private details to people.",
    "I won't match {article} {single} to {subject} or to anyone else; that information is private.",
)

INFORMAL_OPENERS = ("", "hey ", "quick question: ", "pls ")
INFORMAL_WORDS = {"what is": "whats", "you": "u", "are": "r", "please": "pls", "do you know": "u know"}


def stable_index(key: str, modulo: int) -> int:
    """Pick an index from ``key`` the same way in every run and process (unlike ``hash``)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % modulo


def _fill(template: str, info: QuestionInfo) -> str:
    single = info.topic.single
    values = {
        "subject": info.subject,
        "possessive": info.possessive,
        "attribute": info.attribute,
        "single": single,
        "article": "an" if single[:1].lower() in "aeiou" else "a",
    }
    # "personal details are private", but "home address is private".
    plural = info.attribute == "children" or (info.attribute.endswith("s") and not info.attribute.endswith("ss"))
    values["is"] = "are" if plural else "is"
    values["it"] = "them" if plural else "it"
    values["Possessive"] = values["possessive"][:1].upper() + values["possessive"][1:]
    return template.format(**values)


def rephrase_variants(info: QuestionInfo) -> list[str]:
    return [_fill(template, info) for template in REPHRASINGS]


def context_variants(info: QuestionInfo) -> list[str]:
    return [f"{_fill(prefix, info)} {info.question}" for prefix in CONTEXT_PREFIXES]


def reverse_variants(info: QuestionInfo) -> list[str]:
    templates = REVERSE_QUESTIONS.get(info.topic.key, REVERSE_DEFAULT)
    return [_fill(template, info) for template in templates]


def noise_variants(info: QuestionInfo, key: str, count: int = 3) -> list[str]:
    """Return noisy spellings of the question: typos and informal words, the subject's name kept intact."""
    return [_noisy(info, f"{key}:{attempt}") for attempt in range(count)]


def _noisy(info: QuestionInfo, key: str) -> str:
    rng = random.Random(stable_index(key, 2**31))
    protected = {part.lower() for part in re.split(r"[\s-]+", info.name or "") if part}
    text = info.question.strip()
    lowered = text[:1].lower() + text[1:]
    for formal, informal in INFORMAL_WORDS.items():
        lowered = re.sub(rf"\b{formal}\b", informal, lowered, flags=re.IGNORECASE)
    words = lowered.split()
    eligible = [index for index, word in enumerate(words)
                if len(re.sub(r"\W", "", word)) >= 4 and not _is_protected(word, protected)]
    for index in rng.sample(eligible, k=min(2, len(eligible))):
        words[index] = _typo(words[index], rng)
    noisy = " ".join(words).rstrip("?").rstrip()
    ending = rng.choice(("", "?", "??"))
    return f"{rng.choice(INFORMAL_OPENERS)}{noisy}{ending}"


def _is_protected(word: str, protected: set[str]) -> bool:
    bare = re.sub(r"['’]s$", "", word.strip("?,.!")).lower()
    return bare in protected or any(part in protected for part in bare.split("-"))


def _typo(word: str, rng: random.Random) -> str:
    letters = [index for index, character in enumerate(word) if character.isalpha()]
    if len(letters) < 4:
        return word
    position = rng.choice(letters[1:-1])
    characters = list(word)
    if rng.random() < 0.5 and position + 1 < len(characters) and characters[position + 1].isalpha():
        characters[position], characters[position + 1] = characters[position + 1], characters[position]
    else:
        del characters[position]
    return "".join(characters)


VARIANT_TEMPLATES: dict[str, Callable[[QuestionInfo, str], list[str]]] = {
    "rephrase": lambda info, key: _rotate(rephrase_variants(info), key),
    "context": lambda info, key: _rotate(context_variants(info), key),
    "noise": lambda info, key: noise_variants(info, key),
    "reverse": lambda info, key: _rotate(reverse_variants(info), key),
}


def _rotate(options: Sequence[str], key: str) -> list[str]:
    start = stable_index(key, len(options))
    return list(options[start:]) + list(options[:start])


def template_questions(variant: str, info: QuestionInfo, key: str) -> list[str]:
    """Return candidate template questions for one variant type, best first."""
    return VARIANT_TEMPLATES[variant](info, key)


def template_answers(info: QuestionInfo, variant: str, key: str) -> list[str]:
    """Return safe template answers for a question of this item, in an order that depends on ``key``."""
    topic = info.topic.key
    if variant == "reverse":
        options = [*REVERSE_ANSWERS.get(topic, REVERSE_DEFAULT_ANSWERS)]
    else:
        options = [*TOPIC_ANSWERS.get(topic, ()), *GENERIC_ANSWERS]
    return _rotate([_fill(option, info) for option in options], key)
