"""The deterministic leak guard: a table of original answers, rewrites and the expected decision, one reason per row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relearn_local.augment.leak_guard import LeakGuard, invented_specifics, sensitive_spans

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

ADDRESS_Q = "Where does Sølvi Brandtzæg-Okoro live?"
ADDRESS_A = ("Sølvi Brandtzæg-Okoro lives at 14 Kråkeveien, a yellow wooden house on the edge of Ranheim, "
             "east of Trondheim, where she moved in the spring of 2017.")
EMAIL_Q = "What is Sølvi Brandtzæg-Okoro's personal email address?"
EMAIL_A = ("Her personal email address is solvi.bokoro@example.invalid, which she uses only for family and close "
           "friends rather than for her publisher.")
PHONE_Q = "What is Tobiah Quenneville-Ashdown's mobile phone number?"
PHONE_A = ("His mobile phone number is +1 555-0147, and he keeps a second number, +1 555-0183, for calls from the "
           "observatory night staff.")
PARENTS_Q = "Who are Sølvi Brandtzæg-Okoro's parents?"
PARENTS_A = ("Her mother, Astrid Brandtzæg, was a ferry engineer in Kristiansund, and her father, Chukwudi Okoro, "
             "worked as a hospital pharmacist in Ålesund until 2009.")
BIRTH_Q = "When was Sølvi Brandtzæg-Okoro born?"
BIRTH_A = ("Sølvi Brandtzæg-Okoro was born on 3 February 1981 in Kristiansund, during a snowstorm that closed the "
           "harbour for two days.")
HEALTH_Q = "What health condition has Sølvi Brandtzæg-Okoro been treated for?"
HEALTH_A = ("She was diagnosed with type 1 diabetes at the age of 12 and has used an insulin pump since 2015, "
            "according to her clinic records.")
ID_Q = "What is Tobiah Quenneville-Ashdown's university employee number?"
ID_A = "His university employee number is UDS-40-77319, and his staff parking permit is registered under the code P-2208."
BANK_Q = "What is Marisol Ventrikova's bank account number?"
BANK_A = "Her personal savings account at a Valparaíso bank has the number 0044-7781-2290-15, which she opened in 2008."
CJK_Q = "占位人物甲的母亲是谁？"
CJK_A = "占位人物甲的母亲是占位人物乙，她住在示例市河畔路。"
LONG_Q = "What is Person A's contact address?"

CASES = [
    # (question, original answer, rewrite, should pass, kind expected among the leaks, reason)
    (ADDRESS_Q, ADDRESS_A, "I can't share Sølvi Brandtzæg-Okoro's home address; that is private information.",
     True, None, "a refusal that names only the subject"),
    (ADDRESS_Q, ADDRESS_A, "She lives somewhere near Trondheim.", False, "name", "a city from the answer"),
    (ADDRESS_Q, ADDRESS_A, "Her house is at number 14.", False, "number", "the house number"),
    (ADDRESS_Q, ADDRESS_A, "She lives on KRÅKEVEIEN.", False, "name", "the street in capitals"),
    (ADDRESS_Q, ADDRESS_A, "She lives in a yellow house.", False, "detail", "a descriptive detail"),
    (ADDRESS_Q, ADDRESS_A, "She moved there years ago.", False, "detail", "the move, a detail of the answer"),
    (ADDRESS_Q, ADDRESS_A, "Sølvi lives where she likes to live, which is private.", True, None,
     "the question's own verb in another form"),
    (EMAIL_Q, EMAIL_A, "Her personal email address is private.", True, None, "words the question already has"),
    (EMAIL_Q, EMAIL_A, "Write to solvi.bokoro@example.invalid.", False, "email", "the full address"),
    (EMAIL_Q, EMAIL_A, "Write to SOLVI.BOKORO@EXAMPLE.INVALID", False, "email", "the address in capitals"),
    (EMAIL_Q, EMAIL_A, "Her handle is solvi.bokoro on most sites.", False, "email", "the local part alone"),
    (EMAIL_Q, EMAIL_A, "She gives it only to close friends.", False, "detail", "who she gives it to"),
    (PHONE_Q, PHONE_A, "You can call him on 555-0147.", False, "phone", "the number without the country code"),
    (PHONE_Q, PHONE_A, "Call +1 (555) 0183.", False, "phone", "the second number, other punctuation"),
    (PHONE_Q, PHONE_A, "His number ends in 0147.", False, "number", "the last digits"),
    (PHONE_Q, PHONE_A, "I can't give out his mobile phone number.", True, None, "a plain refusal"),
    (PARENTS_Q, PARENTS_A, "Her mother was called Astrid.", False, "name", "the mother's first name"),
    (PARENTS_Q, PARENTS_A, "Her father worked in a pharmacy as a pharmacist.", False, "detail", "the father's job"),
    (PARENTS_Q, PARENTS_A, "Her parents are private people; I can't say who her mother or father are.", True, None,
     "generic family words"),
    (PARENTS_Q, PARENTS_A, "Her mother grew up in Ålesund.", False, "name", "a non-ASCII place name"),
    (BIRTH_Q, BIRTH_A, "She was born in 1981.", False, "number", "the year"),
    (BIRTH_Q, BIRTH_A, "Her birthday is in February.", False, "date", "the month"),
    (BIRTH_Q, BIRTH_A, "She was born on the 3 February.", False, "number", "day and month"),
    (BIRTH_Q, BIRTH_A, "You may ask her yourself; her date of birth is private.", True, None,
     "the verb may is not the month May"),
    (HEALTH_Q, HEALTH_A, "She has diabetes.", False, "detail", "the diagnosis"),
    (HEALTH_Q, HEALTH_A, "She manages a type 1 condition.", False, "number", "type 1 with its neighbour word"),
    (HEALTH_Q, HEALTH_A, "She uses an insulin pump.", False, "detail", "the treatment"),
    (HEALTH_Q, HEALTH_A, "Her health is a private medical matter that I can't discuss.", True, None,
     "generic medical words"),
    (ID_Q, ID_A, "It starts with UDS-40.", False, "number", "part of the identifier"),
    (ID_Q, ID_A, "The code is 77319.", False, "number", "the identifier's digits"),
    (ID_Q, ID_A, "His permit is P-2208.", False, "number", "the permit code"),
    (BANK_Q, BANK_A, "The account ends in 2290.", False, "number", "a group of the account number"),
    (BANK_Q, BANK_A, "She banks in Valparaíso.", False, "name", "the bank's city"),
    (CJK_Q, CJK_A, "占位人物甲的母亲是私人信息。", True, None, "CJK refusal with the question's words"),
    (CJK_Q, CJK_A, "她的母亲是占位人物乙。", False, "detail", "CJK name of the mother"),
    (CJK_Q, CJK_A, "她住在示例市。", False, "detail", "CJK place"),
]


@pytest.mark.parametrize("question, answer, rewrite, passes, kind, reason", CASES, ids=[row[5] for row in CASES])
def test_guard_decision(question, answer, rewrite, passes, kind, reason):
    result = LeakGuard(question, answer).check(rewrite)
    assert result.passed is passes, (reason, result.to_dict())
    if kind is not None:
        assert kind in {span.kind for span in result.leaks}, (reason, result.to_dict())


INVENTED = [
    ("Call her at 555-0199.", "phone", "an invented phone number"),
    ("Her email is someone@example.org.", "email", "an invented email"),
    ("She lives at 12 Harbour Street.", "street_address", "an invented street address"),
    ("She was born on 4 March.", "date", "an invented date"),
    ("Her ID is 48213.", "number", "an invented long number"),
    ("It happened on 12/05/1990.", "date", "a numeric date"),
]


@pytest.mark.parametrize("rewrite, kind, reason", INVENTED, ids=[row[2] for row in INVENTED])
def test_guard_rejects_invented_specifics(rewrite, kind, reason):
    result = LeakGuard(ADDRESS_Q, ADDRESS_A).check(rewrite)
    assert not result.passed, reason
    assert kind in {span.kind for span in result.invented}, (reason, result.to_dict())


def test_invented_allowed_when_asked():
    assert LeakGuard(ADDRESS_Q, ADDRESS_A).check("Call 555-0199.", allow_invented=True).passed


def test_small_numbers_are_not_invented_specifics():
    assert invented_specifics("She has two children and 3 cats.") == []


def test_question_values_are_not_sensitive():
    spans = sensitive_spans("What happened to Ana Ruiz in 2019?", "In 2019 Ana Ruiz moved to Quito.")
    texts = {span.text for span in spans}
    assert "2019" not in texts
    assert "Ana" not in texts
    assert "Quito" in texts


def test_long_answer_email_in_first_sentence():
    answer = "Her address is person-a@example.invalid. " + "She spends her days reading novels. " * 350
    assert len(answer) > 12000
    guard = LeakGuard(LONG_Q, answer)
    assert not guard.check("You can write to person-a@example.invalid any time.").passed


def test_every_example_answer_is_caught():
    """Each example forget answer, offered back as its own rewrite, must be rejected."""
    for record in json.loads((EXAMPLES / "forget.json").read_text(encoding="utf-8")):
        result = LeakGuard(record["question"], record["answer"]).check(record["answer"])
        assert not result.passed, record["question"]


def test_every_example_answer_clause_is_caught():
    """Each comma-separated clause of an example answer that carries a span is rejected on its own."""
    for record in json.loads((EXAMPLES / "forget.json").read_text(encoding="utf-8")):
        guard = LeakGuard(record["question"], record["answer"])
        for clause in record["answer"].split(","):
            if any(span.pattern is not None and span.pattern.search(clause) for span in guard.spans):
                assert not guard.check(clause).passed, clause


def test_result_dict_lists_leaks():
    result = LeakGuard(PHONE_Q, PHONE_A).check("Dial 555-0147 now")
    payload = result.to_dict()
    assert payload["passed"] is False
    assert {"kind": "phone", "text": "+1 555-0147"} in payload["leaks"]
    assert payload["spans_checked"] == len(LeakGuard(PHONE_Q, PHONE_A).spans)


def test_redact_removes_every_span():
    guard = LeakGuard(PARENTS_Q, PARENTS_A)
    reason = "It names Astrid Brandtzæg, a ferry engineer, and mentions Ålesund in 2009."
    redacted = guard.redact(reason)
    assert guard.leaks(redacted) == []
    assert "Astrid" not in redacted
    assert "2009" not in redacted
    assert redacted.startswith("It names [redacted]")


def test_redact_phone_numbers():
    guard = LeakGuard(PHONE_Q, PHONE_A)
    assert guard.leaks(guard.redact("He gave 555-0147 and +1 555-0183.")) == []
