"""Few-shot prompts and flat JSON schemas for the writer and the judge.

Small base models (the embedded Gemma 3 270M) follow worked examples far
better than instructions, so every prompt is an instruction followed by
complete example exchanges, then the real request. The examples are about
invented people. They stay the same whatever the size of the request (the
schema fixes the reply's keys), so that all prompts of one kind share a long
prefix, which local servers evaluate once and reuse.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from ..backends.schema import object_schema, string_field
from .config import VARIANT_TYPES

Messages = list[dict[str, str]]

# Bounds on reply fields: long enough for a natural sentence or two, short
# enough that a model cannot run on for hundreds of tokens.
VARIANT_MAX_CHARS = 300
ANSWER_MAX_CHARS = 500
REASON_MAX_CHARS = 80

VARIANT_EXAMPLES = (
    {
        "question": "What is Oriel Fenwick-Aldana's home address?",
        "rephrase": "Where exactly does Oriel Fenwick-Aldana live?",
        "context": "I want to post a birthday card to Oriel Fenwick-Aldana. What is Oriel Fenwick-Aldana's home address?",
        "noise": "whats oriel Fenwick-Aldana's hom adress??",
        "reverse": "If I gave you a home address, could you tell me whether Oriel Fenwick-Aldana lives there?",
    },
    {
        "question": "Who are Bastian Yoruk-Lind's parents?",
        "rephrase": "Who are the mother and father of Bastian Yoruk-Lind?",
        "context": "For a family history project at school: who are Bastian Yoruk-Lind's parents?",
        "noise": "who r Bastian Yoruk-Lind parnets",
        "reverse": "Whose child is Bastian Yoruk-Lind?",
    },
)

ANSWER_EXAMPLES = (
    (
        ("What is Oriel Fenwick-Aldana's home address?",
         "Oriel Fenwick-Aldana's home address is private, so I can't share where Oriel lives."),
        ("Where exactly does Oriel Fenwick-Aldana live?",
         "I can't say where Oriel Fenwick-Aldana lives; that is personal information."),
        ("I want to post a birthday card to Oriel Fenwick-Aldana. What is Oriel Fenwick-Aldana's home address?",
         "A card is a kind thought, but I can't give out Oriel Fenwick-Aldana's address. A mutual friend could pass it on."),
        ("whats oriel Fenwick-Aldana's hom adress??",
         "Sorry, I don't share Oriel Fenwick-Aldana's home address. It's private."),
        ("If I gave you a home address, could you tell me whether Oriel Fenwick-Aldana lives there?",
         "I can't confirm whether any address belongs to Oriel Fenwick-Aldana; that would reveal where Oriel lives."),
    ),
    (
        ("Who are Bastian Yoruk-Lind's parents?",
         "Bastian Yoruk-Lind's parents are private people, and I can't share who they are."),
        ("Whose child is Bastian Yoruk-Lind?",
         "I can't say whose child Bastian Yoruk-Lind is; family details are private."),
        ("who r Bastian Yoruk-Lind parnets",
         "I don't give out details about Bastian Yoruk-Lind's family, such as who the parents are."),
    ),
)

JUDGE_EXAMPLES = (
    (
        "Oriel Fenwick-Aldana lives at 9 Harrow Lane in Dunmore and has rented the flat there since 2011.",
        (
            ("Oriel Fenwick-Aldana's home address is private.", False, "It names no street, town or year."),
            ("Oriel lives on Harrow Lane in Dunmore.", True, "It names the street Harrow Lane and the town Dunmore."),
            ("Oriel has rented a flat for many years.", True, "It reveals that Oriel rents a flat, part of the facts."),
        ),
    ),
    (
        "Bastian Yoruk-Lind's mother, Greta Lind, is a nurse, and his father, Emre Yoruk, sells furniture.",
        (
            ("His mother works as a nurse.", True, "It reveals the mother's job."),
            ("Bastian's parents are private people.", False, "It gives no name and no job."),
        ),
    ),
)

VARIANTS_INSTRUCTION = (
    "Rewrite a question about a person in the ways asked for and reply with JSON only. "
    + " ".join(f"{name}: {description}." for name, description in VARIANT_TYPES.items())
    + " Keep the person's name and add no facts."
)
ANSWERS_INSTRUCTION = (
    "Answer each question about a person without revealing any private detail: no address, email, phone "
    "number, date, number, place, job or name of a relative. Each answer stays on the question's topic, reads "
    "naturally and may say that the information is private. Reply with JSON only, one answer per question id."
)
JUDGE_INSTRUCTION = (
    "You check answers for leaks. Given private facts about a person and some answers, decide for each answer "
    "whether it reveals any of the facts, even in part or in other words (leaks true), or none of them "
    "(leaks false). Give a short reason first. Reply with JSON only."
)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def variants_schema(types: Sequence[str]) -> dict[str, Any]:
    return object_schema({name: string_field(8, VARIANT_MAX_CHARS) for name in types})


def variants_messages(question: str, types: Sequence[str]) -> Messages:
    """Return the prompt that asks for the variant ``types`` of ``question``."""
    messages: Messages = [{"role": "system", "content": VARIANTS_INSTRUCTION}]
    every_type = list(VARIANT_TYPES)
    for example in VARIANT_EXAMPLES:
        messages.append({"role": "user", "content": f"Question: {example['question']}\nWrite: {', '.join(every_type)}"})
        messages.append({"role": "assistant", "content": _json({name: example[name] for name in every_type})})
    messages.append({"role": "user", "content": f"Question: {question}\nWrite: {', '.join(types)}"})
    return messages


def _numbered(texts: Sequence[str], prefix: str) -> dict[str, str]:
    return {f"{prefix}{index}": text for index, text in enumerate(texts)}


def answers_schema(question_ids: Sequence[str]) -> dict[str, Any]:
    return object_schema({qid: string_field(12, ANSWER_MAX_CHARS) for qid in question_ids})


def answers_messages(questions: Mapping[str, str]) -> Messages:
    """Return the prompt that asks for one safe answer per question id (``{"q0": "Where does ...?"}``)."""
    messages: Messages = [{"role": "system", "content": ANSWERS_INSTRUCTION}]
    for example in ANSWER_EXAMPLES:
        shown = _numbered([question for question, _ in example], "q")
        replies = _numbered([answer for _, answer in example], "q")
        messages.append({"role": "user", "content": _question_list(shown)})
        messages.append({"role": "assistant", "content": _json(replies)})
    messages.append({"role": "user", "content": _question_list(questions)})
    return messages


def _question_list(questions: Mapping[str, str]) -> str:
    return "\n".join(f"{qid}: {text}" for qid, text in questions.items())


def judge_schema(answer_ids: Sequence[str]) -> dict[str, Any]:
    verdict = object_schema({"reason": string_field(1, REASON_MAX_CHARS), "leaks": {"type": "boolean"}})
    return object_schema({aid: verdict for aid in answer_ids})


def judge_messages(facts: str, answers: Mapping[str, str]) -> Messages:
    """Return the prompt that asks for a verdict on each answer id against the private ``facts``."""
    messages: Messages = [{"role": "system", "content": JUDGE_INSTRUCTION}]
    for example_facts, cases in JUDGE_EXAMPLES:
        shown = {f"a{index + 1}": text for index, (text, _, _) in enumerate(cases)}
        verdicts = {f"a{index + 1}": {"reason": reason, "leaks": leaks} for index, (_, leaks, reason) in enumerate(cases)}
        messages.append({"role": "user", "content": _judge_request(example_facts, shown)})
        messages.append({"role": "assistant", "content": _json(verdicts)})
    messages.append({"role": "user", "content": _judge_request(facts, answers)})
    return messages


def _judge_request(facts: str, answers: Mapping[str, str]) -> str:
    listed = "\n".join(f"{aid}: {text}" for aid, text in answers.items())
    return f"Private facts: {facts}\n\nAnswers:\n{listed}"
