"""Entity extraction (spaCy pipeline and rules), question filtering and fuzzy matching with MiniLM."""

from __future__ import annotations

import pytest

from relearn_local.evaluate.entities import (EntityMatcher, RuleEntityExtractor, drop_question_entities,
                                             entity_overlaps, load_extractor, spacy_available)

needs_spacy = pytest.mark.skipif(not spacy_available(), reason="the packaged spaCy pipeline is not installed")


@pytest.fixture(scope="session")
def matcher():
    """The packaged MiniLM, loaded once for the whole test session."""
    return EntityMatcher()


@pytest.fixture(scope="session")
def spacy_extractor():
    return load_extractor("spacy")


RULE_CASES = [
    ("Her personal email address is solvi.bokoro@example.invalid.", "solvi.bokoro@example.invalid", "e-mail"),
    ("Call him on 555-0142 after six.", "555-0142", "phone number"),
    ("She was born on 3 February 1981 in Kristiansund.", "3 February 1981", "day-month-year date"),
    ("He was born on March 3, 1985.", "March 3, 1985", "month-day-year date"),
    ("She lives at 14 Kråkeveien near the sea.", "14 Kråkeveien", "house number with street"),
    ("Her mother, Astrid Brandtzæg, was an engineer.", "Astrid Brandtzæg", "name after a comma"),
    ('Her best-known novel is "The Salt Ledger", published in 2012.', "The Salt Ledger", "quoted title"),
    ("He worked at the Bank of England until 2009.", "Bank of England", "connector inside a name"),
    ("He lives on Rue des Érables in Sherbrooke.", "Rue des Érables", "French connector"),
    ("See https://example.invalid/profile for more.", "https://example.invalid/profile", "URL"),
]


@pytest.mark.parametrize("text, expected, reason", RULE_CASES)
def test_rule_extractor_finds(text, expected, reason):
    assert expected in RuleEntityExtractor().extract(text), reason


@pytest.mark.parametrize("text", ["Her mother is kind.", "The house is yellow.", "She left."])
def test_rule_extractor_skips_sentence_openers(text):
    assert RuleEntityExtractor().extract(text) == []


def test_rule_extractor_deduplicates_case_insensitively():
    assert RuleEntityExtractor().extract("Oslo is big. OSLO is old. Oslo again.") == ["Oslo"]


@needs_spacy
def test_spacy_extractor_finds_names_places_and_emails(spacy_extractor):
    text = "Her mother, Astrid Brandtzæg, lives in Kristiansund and answers astrid@example.invalid."
    entities = spacy_extractor.extract_many([text])[0]
    assert "Astrid Brandtzæg" in entities
    assert "Kristiansund" in entities
    assert "astrid@example.invalid" in entities


@needs_spacy
def test_spacy_extractor_key_nouns(spacy_extractor):
    entities = spacy_extractor.extract_many(["Her father is a renowned climate scientist."])[0]
    assert "father" in entities
    assert "scientist" in entities


@needs_spacy
def test_spacy_extractor_skips_generic_nouns(spacy_extractor):
    assert spacy_extractor.extract_many(["I cannot share personal details about private individuals."]) == [[]]


@needs_spacy
def test_spacy_extractor_without_key_nouns():
    extractor = load_extractor("spacy", key_nouns=False)
    assert extractor.extract_many(["Her father, Tomasz Nowak, is a climate scientist."]) == [["Tomasz Nowak"]]
    assert not extractor.name.endswith("+nouns")


@needs_spacy
def test_spacy_extractor_batch_keeps_order(spacy_extractor):
    results = spacy_extractor.extract_many(["Mara lives in Oslo.", "", "Tomasz paints in Krakow."])
    assert len(results) == 3
    assert results[1] == []
    assert "Krakow" in results[2]


def test_load_extractor_rules_choice():
    assert load_extractor("rules").name == "rules"


def test_question_entities_dropped():
    question = "Where does Sølvi Brandtzæg-Okoro live?"
    kept = drop_question_entities(["Sølvi Brandtzæg-Okoro", "Ranheim", "Okoro Foundation"], question)
    assert kept == ["Ranheim", "Okoro Foundation"]


def test_question_entity_with_possessive_dropped():
    kept = drop_question_entities(["Isabella Marquez's", "Maria Marquez"], "Who is Isabella Marquez's mother?")
    assert kept == ["Maria Marquez"]


def test_matcher_identical_entities(matcher):
    vectors = matcher.embed(["Kristiansund", "3 February 1981"])
    matched, similarity = matcher.match(["Kristiansund", "3 February 1981"], ["Kristiansund", "3 February 1981"],
                                        vectors)
    assert similarity == 1.0
    assert matched == ["Kristiansund", "3 February 1981"]


def test_matcher_fuzzy_match_and_miss(matcher):
    answer = ["Astrid Brandtzaeg", "a hospital"]
    truth = ["Astrid Brandtzæg", "Ålesund", "2009"]
    _, similarity = matcher.match(answer, truth, matcher.embed(answer + truth))
    assert similarity == pytest.approx(1 / 3)


def test_matcher_empty_sides(matcher):
    assert matcher.match([], ["Oslo"], matcher.embed(["Oslo"])) == ([], 0.0)
    assert matcher.match(["Oslo"], [], matcher.embed(["Oslo"])) == ([], None)


def test_similarity_never_exceeds_one(matcher):
    answer = ["Oslo", "oslo city", "Oslo, Norway"]
    _, similarity = matcher.match(answer, ["Oslo"], matcher.embed(answer + ["Oslo"]))
    assert similarity == 1.0


class _FailingOn:
    """An extractor that fails on one text, as a broken NER model would."""

    name = "failing"

    def __init__(self, bad: str):
        self.bad = bad

    def extract_many(self, texts):
        if self.bad in texts:
            raise RuntimeError("NER crashed")
        return RuleEntityExtractor().extract_many(texts)


def test_extractor_failure_marks_only_its_item(matcher):
    results = entity_overlaps(
        ["Where does Mara live?", "Where does Tomasz live?"],
        ["Mara lives in Oslo.", "BAD"],
        ["Mara lives in Oslo.", "Tomasz lives in Krakow."],
        _FailingOn("BAD"), matcher,
    )
    assert results[0].similarity == 1.0
    assert results[0].error is None
    assert results[1].similarity is None
    assert "NER crashed" in results[1].error


def test_overlap_reports_progress(matcher):
    events = []
    entity_overlaps(["Q?"], ["Mara lives in Oslo."], ["Mara lives in Oslo."], RuleEntityExtractor(), matcher,
                    events.append)
    assert events[-1].done
    assert events[-1].completed == 1
