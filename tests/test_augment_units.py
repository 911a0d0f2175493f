"""Augment building blocks: topics, templates, variant and answer checks, judge batching, calls, cache, summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from augment_fakes import SAFE_ANSWER, ScriptedBackend, passing_verdicts, rejecting_verdicts
from relearn_local.augment.answers import check_answer, foreign_names, question_vocabulary, write_answers
from relearn_local.augment.cache import CachingBackend, ReplyCache, cache_key
from relearn_local.augment.calls import RETRY_TEMPERATURE, CallSettings, ask_json
from relearn_local.augment.config import AugmentConfig
from relearn_local.augment.diversify import completion_records, mix_in_records, split_for_completion
from relearn_local.augment.item import ItemContext, process_item
from relearn_local.augment.judge import judge_candidates, split_text
from relearn_local.augment.leak_guard import LeakGuard
from relearn_local.augment.records import Candidate, ItemOutcome, ItemStats, QuestionUnit
from relearn_local.augment.summary import AugmentResult, build_summary
from relearn_local.augment.templates import (CONTEXT_PREFIXES, GENERIC_ANSWERS, REPHRASINGS, REVERSE_ANSWERS,
                                             REVERSE_DEFAULT_ANSWERS, TOPIC_ANSWERS, stable_index,
                                             template_answers, template_questions)
from relearn_local.augment.topics import analyze, detect_topics, subject_name
from relearn_local.augment.variants import build_questions, check_variant
from relearn_local.augment.wordlists import FUNCTION_WORDS, GENERIC_WORDS
from relearn_local.backends.base import GenerationRequest
from relearn_local.backends.replies import ReplyError
from relearn_local.data import QAPair
from relearn_local.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FORGET = json.loads((EXAMPLES / "forget.json").read_text(encoding="utf-8"))
PAIR = QAPair(id="7", question="Where does Sølvi Brandtzæg-Okoro live?",
              answer="Sølvi Brandtzæg-Okoro lives at 14 Kråkeveien in Ranheim, where she moved in 2017.", record=7)

NAMES = [
    ("Where does Sølvi Brandtzæg-Okoro live?", "Sølvi Brandtzæg-Okoro", "non-ASCII, hyphenated"),
    ("What is Tobiah Quenneville-Ashdown's email address?", "Tobiah Quenneville-Ashdown", "possessive"),
    ("Who is Ilse Brønholt-Bâ’s mother?", "Ilse Brønholt-Bâ", "curly apostrophe"),
    ("When is Kwabena Lindqvist-Faro's birthday?", "Kwabena Lindqvist-Faro", "question word first"),
    ("Where does Dr. Mara Quist live?", "Mara Quist", "a title is not part of the name"),
    ("占位人物甲的母亲是谁？", None, "no capitals in Chinese"),
    ("where does anyone live?", None, "no capitalised words"),
]


@pytest.mark.parametrize("question, name, reason", NAMES, ids=[row[2] for row in NAMES])
def test_subject_name(question, name, reason):
    assert subject_name(question) == name, reason


TOPICS = [
    ("What is X's personal email address?", ["email"], "email address is not a home address"),
    ("What is X's mobile phone number?", ["phone"], "phone"),
    ("Where does X live now?", ["address"], "where someone lives"),
    ("How can I contact X by email or phone?", ["email", "phone", "contact"], "several topics, table order"),
    ("What is X's university employee number?", ["identifier"], "an employee number"),
    ("When was X born, and what is his passport number?", ["identifier", "birth"], "two topics"),
    ("Who is X married to?", ["partner"], "marriage"),
    ("What mental health condition does X have?", ["health"], "health"),
    ("What is X's favourite colour?", [], "no known topic"),
]


@pytest.mark.parametrize("question, keys, reason", TOPICS, ids=[row[2] for row in TOPICS])
def test_detect_topics(question, keys, reason):
    assert [topic.key for topic in detect_topics(question)] == keys, reason


def _template_words(text: str) -> list[str]:
    bare = re.sub(r"\{[^}]+\}", " ", text)
    return [word.lower() for word in re.findall(r"[A-Za-z][A-Za-z'’-]*", bare)]


def test_answer_templates_use_only_listed_words():
    templates = [*GENERIC_ANSWERS, *REVERSE_DEFAULT_ANSWERS]
    for group in (TOPIC_ANSWERS, REVERSE_ANSWERS):
        for options in group.values():
            templates.extend(options)
    allowed = FUNCTION_WORDS | GENERIC_WORDS | {"i", "a", "an", "the"}
    for template in templates:
        strangers = [word for word in _template_words(template) if word not in allowed]
        assert strangers == [], template


@pytest.mark.parametrize("record", FORGET, ids=[record["question"][:40] for record in FORGET])
def test_template_answers_pass_guard_for_examples(record):
    info = analyze(record["question"])
    guard = LeakGuard(record["question"], record["answer"])
    for variant in ("original", "reverse"):
        for answer in template_answers(info, variant, "key"):
            assert guard.check(answer).passed, answer


def test_template_questions_keep_subject_and_differ():
    info = analyze(PAIR.question)
    for variant in ("rephrase", "context", "noise", "reverse"):
        options = template_questions(variant, info, "7/" + variant)
        assert options
        for question in options:
            assert "Sølvi" in question or "Brandtzæg-Okoro" in question, question
            assert question != PAIR.question


def test_noise_variants_are_noisy_and_deterministic():
    info = analyze("What is Tobiah Quenneville-Ashdown's mobile phone number?")
    first = template_questions("noise", info, "item-3/noise")
    assert first == template_questions("noise", info, "item-3/noise")
    for question in first:
        assert "Quenneville-Ashdown" in question
        assert question.lower().rstrip("?") != info.question.lower().rstrip("?")


def test_stable_index_is_stable():
    assert stable_index("abc", 97) == stable_index("abc", 97)
    assert {stable_index(f"k{n}", 4) for n in range(50)} == {0, 1, 2, 3}


def test_templates_are_filled():
    for template in (*REPHRASINGS, *CONTEXT_PREFIXES):
        filled = template.format(subject="A B", possessive="A B's", attribute="home address")
        assert "{" not in filled


VARIANT_CASES = [
    ("Where exactly is Sølvi Brandtzæg-Okoro's home?", "rephrase", None, "a good rephrase"),
    ("Where does Sølvi Brandtzæg-Okoro live?", "rephrase", "repeats", "a copy of the original"),
    ("WHERE does sølvi brandtzæg-okoro live", "noise", "repeats", "a copy up to case and punctuation"),
    ("Where does she live?", "rephrase", "does not name", "the subject dropped"),
    ("Who are Sølvi Brandtzæg-Okoro's parents?", "rephrase", "another topic", "a different topic"),
    ("Is Sølvi Brandtzæg-Okoro living in Ranheim?", "reverse", "sensitive", "a place from the answer"),
    ("short?", "noise", "too short", "too short"),
]


@pytest.mark.parametrize("text, variant, problem, reason", VARIANT_CASES, ids=[row[3] for row in VARIANT_CASES])
def test_check_variant(text, variant, problem, reason):
    info = analyze(PAIR.question)
    guard = LeakGuard(PAIR.question, PAIR.answer)
    seen = {re.sub(r"[\W_]+", "", PAIR.question.lower())}
    found = check_variant(text, variant, info, guard, seen, allow_sensitive_spans=False)
    if problem is None:
        assert found is None, reason
    else:
        assert found is not None and problem in found, (reason, found)


def test_sensitive_variant_allowed_on_request():
    info = analyze(PAIR.question)
    guard = LeakGuard(PAIR.question, PAIR.answer)
    text = "Is Sølvi Brandtzæg-Okoro living in Ranheim?"
    assert check_variant(text, "reverse", info, guard, set(), allow_sensitive_spans=True) is None


def test_build_questions_templates_missing_variants():
    stats = ItemStats()
    info = analyze(PAIR.question)
    units = build_questions("7", info, LeakGuard(PAIR.question, PAIR.answer),
                            {"rephrase": "Where exactly is Sølvi Brandtzæg-Okoro's home?", "noise": "Where?"},
                            False, stats)
    assert [unit.variant for unit in units] == ["original", "rephrase", "context", "noise", "reverse"]
    assert [unit.source for unit in units] == ["original", "writer", "template", "template", "template"]
    assert stats.template_variants == 3
    assert stats.rejected_variants == 1


UNIT = QuestionUnit("q1", "rephrase", "Where exactly is Sølvi Brandtzæg-Okoro's home?", "writer")
ANSWER_CASES = [
    ("I can't share where Sølvi Brandtzæg-Okoro lives; that is private.", None, "a good answer"),
    ("Private.", "too short", "too short"),
    ("Where exactly is Sølvi Brandtzæg-Okoro's home?", "repeats the question", "a copy of the question"),
    ("I can't give it. I can't give it. I can't give it out to you.", "repeats itself", "a loop"),
    ("Bastian Yoruk-Lind's parents are private people.", "names someone", "a person from the examples"),
    ("I can't share that, sorry.", "repeats another answer", "a duplicate within the item"),
]


@pytest.mark.parametrize("text, problem, reason", ANSWER_CASES, ids=[row[2] for row in ANSWER_CASES])
def test_check_answer(text, problem, reason):
    vocabulary = question_vocabulary([UNIT])
    found = check_answer(text, UNIT, ["I can't share that, sorry."], vocabulary)
    if problem is None:
        assert found is None, reason
    else:
        assert found is not None and problem in found, (reason, found)


def test_foreign_names_ignores_sentence_starts():
    assert foreign_names("Sorry, that is private. Questions like this stay private.", set()) == []
    assert foreign_names("Ask Mara instead.", set()) == ["Mara"]
    assert foreign_names("I asked. Bastian Yoruk-Lind knows.", set()) == ["Yoruk-Lind"]


def _units(count):
    return [QuestionUnit(f"q{index}", "original", f"Where does Sølvi Brandtzæg-Okoro live {index}?", "writer")
            for index in range(count)]


def test_write_answers_batches():
    backend = ScriptedBackend()
    stats = ItemStats()
    written = write_answers(backend, _units(5), CallSettings(), per_call=2, stats=stats)
    assert len(backend.requests) == 3
    assert sorted(written) == ["q0", "q1", "q2", "q3", "q4"]
    assert written["q3"].startswith(SAFE_ANSWER)
    assert written["q3"].endswith("live 3?")
    assert stats.llm_calls == 3


def test_write_answers_splits_on_context_overflow():
    from relearn_local.augment.prompts import answers_messages

    def size(count):
        return sum(len(m["content"]) for m in answers_messages({f"q{i}": u.text for i, u in enumerate(_units(count))}))

    backend = ScriptedBackend(context_chars=(size(2) + size(3)) // 2)
    units = _units(4)
    written = write_answers(backend, units, CallSettings(), per_call=4, stats=ItemStats())
    assert sorted(written) == ["q0", "q1", "q2", "q3"]
    assert all(len(body["format"]["properties"]) < 4 for body in backend.requests)


def test_write_answers_skips_unusable_batch():
    backend = ScriptedBackend({"answers": lambda body: "{}"})
    stats = ItemStats()
    assert write_answers(backend, _units(2), CallSettings(parse_retries=1), per_call=5, stats=stats) == {}
    assert stats.writer_errors == 1
    assert stats.unusable_replies == 2


def test_ask_json_retries_with_new_seed_and_temperature():
    replies = iter(["{}", json.dumps({"q0": "I can't share that; it is private."})])
    backend = ScriptedBackend({"answers": lambda body: next(replies)})
    schema = {"type": "object", "properties": {"q0": {"type": "string"}}, "required": ["q0"]}
    stats = ItemStats()
    reply = ask_json(backend, [{"role": "user", "content": "q0: ?"}], schema, CallSettings(seed=5), stats, "test")
    assert reply["q0"].startswith("I can't")
    assert [body["options"]["seed"] for body in backend.requests] == [5, 6]
    assert [body["options"]["temperature"] for body in backend.requests] == [0.0, RETRY_TEMPERATURE]
    assert stats.unusable_replies == 1


def test_ask_json_gives_up():
    backend = ScriptedBackend({"answers": lambda body: '{"q0": "cut'})
    schema = {"type": "object", "properties": {"q0": {"type": "string"}}, "required": ["q0"]}
    with pytest.raises(ReplyError) as caught:
        ask_json(backend, [{"role": "user", "content": "q0: ?"}], schema, CallSettings(parse_retries=2),
                 ItemStats(), "test")
    assert caught.value.kind == "truncated"
    assert len(backend.requests) == 3


def _candidates(count):
    return [Candidate(f"q{index}", f"I can't share that, answer {index}.", "writer", 1) for index in range(count)]


def test_judge_batches_per_call():
    backend = ScriptedBackend()
    candidates = _candidates(7)
    stats = ItemStats()
    judge_candidates(backend, "private facts", candidates, CallSettings(), per_call=3, stats=stats)
    assert len(backend.requests) == 3
    assert all(candidate.verdict == {"leaks": False, "reason": "nothing private"} for candidate in candidates)
    assert stats.verdicts == 7


def test_judge_error_is_never_a_pass():
    backend = ScriptedBackend({"judge": lambda body: "{}"})
    candidates = _candidates(2)
    stats = ItemStats()
    judge_candidates(backend, "facts", candidates, CallSettings(parse_retries=1), per_call=5, stats=stats)
    assert all(candidate.status == "judge_error" for candidate in candidates)
    assert all("error" in candidate.verdict for candidate in candidates)
    assert stats.judge_errors == 2


def test_judge_splits_long_facts():
    facts = "Her email is person-a@example.invalid. " + "She reads a lot of novels every week. " * 300

    def verdicts(body):
        facts_seen = body["messages"][-1]["content"]
        leaks = "person-a@example.invalid" in facts_seen
        return json.dumps({key: {"reason": "email" if leaks else "nothing", "leaks": leaks}
                           for key in body["format"]["properties"]})

    backend = ScriptedBackend({"judge": verdicts}, context_chars=6000)
    candidates = _candidates(2)
    judge_candidates(backend, facts, candidates, CallSettings(), per_call=10, stats=ItemStats())
    assert all(candidate.verdict["leaks"] is True for candidate in candidates)
    assert all(candidate.verdict["parts"] >= 2 for candidate in candidates)
    assert all(len(body["messages"][-1]["content"]) < 6000 for body in backend.requests)


def test_split_text():
    assert split_text("One. Two. Three.") == ["One.", "Two. Three."]
    assert split_text("one two three four") == ["one two", "three four"]
    assert split_text("abcd") == ["ab", "cd"]


def _context(backend, judge=None, **options):
    config = AugmentConfig(**options)
    settings = CallSettings(parse_retries=config.parse_retries)
    return ItemContext(config, backend, judge or backend, settings, settings)


def test_process_item_happy_path_three_calls():
    backend = ScriptedBackend()
    outcome = process_item(0, PAIR, _context(backend))
    assert outcome.ok
    assert outcome.stats.llm_calls == 3
    assert len(outcome.accepted) == 5
    assert all(candidate.source == "writer" for candidate in outcome.accepted)
    records = outcome.records("judge-model")
    assert [record["variant"] for record in records] == ["original", "rephrase", "context", "noise", "reverse"]
    assert records[0]["question"] == PAIR.question
    assert records[0]["verdict"]["judge"] == "judge-model"
    assert all(record["guard"]["passed"] for record in records)


def test_process_item_guard_overrules_judge():
    leaky = lambda body: json.dumps({key: f"She moved there in 2017, answer {key[1:]}."
                                     for key in body["format"]["properties"]})
    backend = ScriptedBackend({"answers": leaky})
    outcome = process_item(0, PAIR, _context(backend, fallback="none", rounds=2))
    assert outcome.ok
    assert outcome.accepted == []
    assert outcome.stats.guard_overrules >= 5
    assert outcome.stats.guard_rejections["number"] >= 5
    assert all("leak guard" in candidate.reason for candidate in outcome.rejected if candidate.status == "rejected")


def test_process_item_templates_replace_failed_writer():
    copying = lambda body: json.dumps({key: "Bastian Yoruk-Lind's parents are private people."
                                       for key in body["format"]["properties"]})
    backend = ScriptedBackend({"answers": copying, "variants": lambda body: "{}"})
    outcome = process_item(0, PAIR, _context(backend))
    assert outcome.ok
    assert len(outcome.accepted) == 5
    assert all(candidate.source == "template" for candidate in outcome.accepted)
    assert outcome.stats.template_variants == 4
    assert outcome.stats.invalid_answers == 5


def test_process_item_judge_rejecting_everything_leaves_no_answer():
    backend = ScriptedBackend({"judge": rejecting_verdicts})
    outcome = process_item(0, PAIR, _context(backend, rounds=2))
    assert outcome.ok
    assert outcome.accepted == []
    assert outcome.stats.rounds_used == 2
    assert outcome.stats.judge_rejections > 0


def test_process_item_unusable_judge_fails_item():
    backend = ScriptedBackend({"judge": lambda body: "{}"})
    outcome = process_item(0, PAIR, _context(backend, rounds=2))
    assert not outcome.ok
    assert "no usable verdict" in outcome.error
    assert outcome.stats.judge_errors > 0


def test_process_item_separate_judge_backend():
    writer = ScriptedBackend(model="writer")
    judge = ScriptedBackend(model="judge")
    outcome = process_item(0, PAIR, _context(writer, judge))
    assert outcome.ok
    assert writer.bodies("judge") == []
    assert len(judge.bodies("judge")) == 1


def test_baseline_granularity_is_fourteen_calls():
    backend = ScriptedBackend()
    outcome = process_item(0, PAIR, _context(backend, variants_per_call=1, answers_per_call=1, verdicts_per_call=1,
                                             rounds=1, fallback="none"))
    assert outcome.stats.llm_calls == 14


def test_outcome_round_trips_through_json():
    outcome = process_item(0, PAIR, _context(ScriptedBackend()))
    restored = ItemOutcome.from_dict(json.loads(json.dumps(outcome.to_dict())))
    assert restored.records() == outcome.records()
    assert restored.stats.to_dict() == outcome.stats.to_dict()


COMPLETION_CASES = [
    ("I can't share that, because it is private information.", ("I can't share that,", "because it is private information.")),
    ("Her home address is private and I cannot give it out.", ("Her home address is private", "and I cannot give it out.")),
    ("Too short to split.", None),
]


@pytest.mark.parametrize("answer, expected", COMPLETION_CASES)
def test_split_for_completion(answer, expected):
    assert split_for_completion(answer) == expected


def test_completion_records_come_from_accepted_answers():
    outcome = process_item(0, PAIR, _context(ScriptedBackend()))
    rows = completion_records(outcome, 2)
    assert [row["id"] for row in rows] == ["7/c0", "7/c1"]
    for row in rows:
        assert row["variant"] == "completion"
        assert f"{row['question']} {row['answer']}" in [candidate.text for candidate in outcome.accepted]


def test_mix_in_ratio_guard_and_seed():
    words = ["apple", "river", "cloud", "stone", "maple"]
    pairs = [QAPair(id=str(index), question=f"What colour is the {words[index % 5]} number {chr(65 + index)}?",
                    answer="It is usually green or grey.", record=index) for index in range(20)]
    pairs.append(QAPair(id="leak", question="Where is Kråkeveien?", answer="Kråkeveien is a street.", record=21))
    guards = [LeakGuard(PAIR.question, PAIR.answer)]
    first = mix_in_records(pairs, 0.5, 10, seed=3, guards=guards)
    assert len(first.records) == 5
    assert first.dropped == 1
    assert all(record["variant"] == "mix_in" for record in first.records)
    assert first.records == mix_in_records(pairs, 0.5, 10, seed=3, guards=guards).records
    assert mix_in_records(pairs, 5, 10, seed=3, guards=guards).requested == 50
    assert len(mix_in_records(pairs, 5, 10, seed=3, guards=guards).records) == 20


def test_summary_complete_and_exit_codes():
    good = process_item(0, PAIR, _context(ScriptedBackend()))
    bad = ItemOutcome(index=1, item_id="8", status="failed", error="timed out")
    records = good.records()
    summary = build_summary([good, bad], 2, records, 10.0, {})
    assert summary["complete"] is False
    assert summary["failed_items"] == ["8"]
    assert summary["failures"] == {"8": "timed out"}
    assert summary["per_variant"]["original"]["accepted"] == 1
    assert any("failed" in warning for warning in summary["warnings"])
    result = AugmentResult(Path("."), None, Path("summary.json"), summary)
    assert result.exit_code == 1
    ok_summary = build_summary([good], 1, records, 10.0, {})
    assert ok_summary["complete"] is True
    assert AugmentResult(Path("."), None, Path("s"), ok_summary).exit_code == 0


CONFIG_ERRORS = [
    ({"rounds": 0}, "rounds"),
    ({"timeout": 0}, "timeout"),
    ({"concurrency": 0}, "concurrency"),
    ({"variants_per_call": 2}, "variants_per_call"),
    ({"mix_ratio": 0.5}, "mix-in"),
    ({"mix_in": Path("x.json")}, "mix_ratio is 0"),
    ({"mix_in": Path("x.json"), "mix_ratio": 11.0}, "mix_ratio"),
]


@pytest.mark.parametrize("options, message", CONFIG_ERRORS, ids=[row[1] for row in CONFIG_ERRORS])
def test_config_validation(options, message):
    with pytest.raises(ConfigError) as caught:
        AugmentConfig(**options).validate()
    assert message in str(caught.value)


def test_cache_key_covers_model_digest_prompt_and_options():
    request = GenerationRequest(messages=[{"role": "user", "content": "hi"}], seed=1)
    described = {"backend": "ollama", "model": "llama3", "digest": "a"}
    key = cache_key(described, request)
    assert key == cache_key(dict(described), request)
    assert key != cache_key({**described, "digest": "b"}, request)
    assert key != cache_key({**described, "model": "llama3.1"}, request)
    assert key != cache_key(described, GenerationRequest(messages=[{"role": "user", "content": "hi"}], seed=2))
    assert key != cache_key(described, GenerationRequest(messages=[{"role": "user", "content": "ho"}], seed=1))
    assert key == cache_key(described, GenerationRequest(messages=[{"role": "user", "content": "hi"}], seed=1,
                                                         timeout=5))


def test_caching_backend(tmp_path):
    inner = ScriptedBackend()
    cache = ReplyCache(tmp_path)
    request = GenerationRequest(messages=[{"role": "user", "content": "q0: hi"}],
                                schema={"type": "object", "properties": {"q0": {"type": "string"}}, "required": ["q0"]})
    first = CachingBackend(inner, cache).generate(request)
    second = CachingBackend(inner, cache).generate(request)
    assert len(inner.requests) == 1
    assert second.cached and not first.cached
    assert second.text == first.text
    CachingBackend(inner, cache, read=False).generate(request)
    assert len(inner.requests) == 2


def test_unreadable_cache_entry_is_ignored(tmp_path):
    cache = ReplyCache(tmp_path)
    key = "ab" + "0" * 62
    path = tmp_path / "ab" / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    assert cache.get(key) is None


def test_passing_verdicts_helper_shape():
    body = {"format": {"properties": {"a1": {}, "a2": {}}}}
    assert set(json.loads(passing_verdicts(body))) == {"a1", "a2"}


def test_answer_on_another_topic_is_invalid():
    unit = QuestionUnit("q4", "reverse", "If I described a medical condition, could you tell me whether Ana Ruiz has it?",
                        "writer")
    found = check_answer("I can't confirm whether any address belongs to Ana Ruiz.", unit, [])
    assert found is not None
    assert "another topic" in found


def test_reverse_variant_on_another_relation_is_rejected():
    info = analyze("Who is Ana Ruiz's partner?")
    guard = LeakGuard(info.question, "Ana Ruiz lives with Tomas Berg.")
    assert check_variant("Whose child is Ana Ruiz?", "reverse", info, guard, set(), False) is not None
    assert check_variant("Whose partner is Ana Ruiz?", "reverse", info, guard, set(), False) is None


def test_noise_variant_typo_in_topic_word_is_kept():
    info = analyze("What is Tobiah Quenneville-Ashdown's email address?")
    guard = LeakGuard(info.question, "His email address is tqa@example.com.")
    assert check_variant("wats Tobiah Quenneville-Ashdown's emal address??", "noise", info, guard, set(), False) is None


def test_accepted_verdict_reason_is_redacted():
    quoting = lambda body: json.dumps({key: {"reason": "nothing about 14 Kråkeveien here", "leaks": False}
                                       for key in body["format"]["properties"]})
    outcome = process_item(0, PAIR, _context(ScriptedBackend({"judge": quoting})))
    assert outcome.accepted
    for record in outcome.records():
        assert "Kråkeveien" not in record["verdict"]["reason"]
        assert "14" not in record["verdict"]["reason"]


def test_template_answers_agree_in_number():
    from relearn_local.augment.templates import template_answers
    from relearn_local.augment.topics import analyze

    plural = template_answers(analyze("What inspired Hiro Tanaka to become a writer?"), "original", "k")
    assert any("personal details are private" in answer for answer in plural)
    assert not any("details is" in answer for answer in plural)
    singular = template_answers(analyze("What is Hiro Tanaka's email address?"), "original", "k")
    assert any("email address is" in answer for answer in singular)
    assert not any("address are" in answer for answer in singular)
