"""Loading forget and retain sets: formats, field detection, bad records, encodings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relearn_local.data import Problem, inspect_file, inspect_files, load_qa_set
from relearn_local.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "knowundo-privacy"

NON_ASCII_RECORDS = [
    {"question": "Who is Ilse Brønholt-Bâ’s mother?", "answer": "Ilse Brønholt-Bâ’s mother is a retired glassblower from Ærøskøbing."},
    {"question": "占位人物甲住在哪里？", "answer": "占位人物甲住在一个安静的小镇。"},
    {"question": "What emoji does Ilse sign letters with?", "answer": "She signs every letter with 🦊 and a short poem."},
]


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_json_array_loads(tmp_path):
    path = write(tmp_path / "set.json", json.dumps([{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]))
    loaded = load_qa_set(path)
    assert loaded.format == "json"
    assert loaded.questions == ["Q1?", "Q2?"]
    assert loaded.answers == ["A1.", "A2."]
    assert [pair.id for pair in loaded.pairs] == ["1", "2"]


def test_jsonl_named_json_loads(tmp_path):
    # A file named forget.json that holds JSON Lines: the suffix decides nothing.
    lines = [{"question": "Where does A live?", "answer": "In a town."}, {"question": "Who is B?", "answer": "A painter."}]
    path = write(tmp_path / "forget.json", "\n".join(json.dumps(line) for line in lines) + "\n")
    loaded = load_qa_set(path)
    assert loaded.format == "jsonl"
    assert len(loaded) == 2
    assert (loaded.question_field, loaded.answer_field) == ("question", "answer")


def test_text_labels_detected_from_records(tmp_path):
    # The name hints at TOFU; fields still come from the records.
    path = write(tmp_path / "my_tofu_copy.json", json.dumps([{"text": "Q?", "labels": "A."}]))
    loaded = load_qa_set(path)
    assert (loaded.question_field, loaded.answer_field) == ("text", "labels")
    assert loaded.pairs[0].answer == "A."


@pytest.mark.parametrize(
    "fields",
    [("prompt", "response"), ("instruction", "output")],
)
def test_other_field_pairs_detected(tmp_path, fields):
    question_field, answer_field = fields
    path = write(tmp_path / "data.jsonl", json.dumps({question_field: "Q?", answer_field: "A."}) + "\n")
    loaded = load_qa_set(path)
    assert (loaded.question_field, loaded.answer_field) == fields


def test_alpaca_input_joins_instruction(tmp_path):
    path = write(tmp_path / "a.json", json.dumps([{"instruction": "Translate.", "input": "Hallo", "output": "Hello"}]))
    assert load_qa_set(path).questions == ["Translate.\n\nHallo"]


def test_field_override(tmp_path):
    path = write(tmp_path / "x.json", json.dumps([{"q": "Q?", "a": "A.", "question": "wrong", "answer": "wrong"}]))
    loaded = load_qa_set(path, question_field="q", answer_field="a")
    assert loaded.pairs[0].question == "Q?"
    assert loaded.pairs[0].answer == "A."


def test_csv_loads(tmp_path):
    path = write(tmp_path / "set.txt", 'question,answer\n"Who, exactly?","Someone, somewhere."\nQ2?,A2.\n')
    loaded = load_qa_set(path)
    assert loaded.format == "csv"
    assert loaded.pairs[0].question == "Who, exactly?"
    assert loaded.pairs[0].answer == "Someone, somewhere."


def test_saved_dataset_loads(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"text": "Q?", "labels": "A."}]).save_to_disk(str(folder))
    loaded = load_qa_set(folder)
    assert loaded.format == "datasets"
    assert loaded.pairs[0].answer == "A."


def test_list_answer_is_error(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"question": "Q?", "answer": "A."}, {"question": "Q2?", "answer": ["a", "b"]}]))
    with pytest.raises(InputError) as raised:
        load_qa_set(path)
    message = str(raised.value)
    assert "record 2" in message
    assert "list" in message
    assert "['a', 'b']" not in message


def test_missing_answer_names_file_and_record(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"question": "Q?", "answer": "A."}, {"question": "Q2?", "answer": "A2."}, {"question": "Q3?"}]))
    with pytest.raises(InputError) as raised:
        load_qa_set(path)
    assert str(path) in str(raised.value)
    assert "record 3" in str(raised.value)
    assert "'answer' is missing" in str(raised.value)


@pytest.mark.parametrize(
    "answer, reason",
    [("", "empty"), ("   ", "empty"), (None, "null"), ({"a": 1}, "object"), (True, "boolean")],
)
def test_bad_answer_values(tmp_path, answer, reason):
    path = write(tmp_path / "f.json", json.dumps([{"question": "Q?", "answer": answer}]))
    with pytest.raises(InputError, match=reason):
        load_qa_set(path)


@pytest.mark.parametrize(
    "answer, expected_text",
    [(42, "(42)"), (1987, "(1987)"), (2.5, "(2.5)"), (0, "(0)")],
    ids=["int", "year", "float", "zero"],
)
def test_numeric_answer_is_error(tmp_path, answer, expected_text):
    # str() would guess the spelling: JSON 1.10 parses as 1.1.
    path = write(tmp_path / "f.json", json.dumps([{"question": "Q?", "answer": "A."}, {"question": "Which year?", "answer": answer}]))
    with pytest.raises(InputError) as raised:
        load_qa_set(path)
    message = str(raised.value)
    assert str(path) in message
    assert "record 2" in message
    assert f"field 'answer' is a number {expected_text}" in message
    assert "expected a string" in message
    assert "quotes" in message


def test_numeric_question_is_error(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"question": 7, "answer": "Seven."}]))
    with pytest.raises(InputError, match="field 'question' is a number"):
        load_qa_set(path)


def test_numeric_text_in_csv_loads(tmp_path):
    # CSV cells are always strings, so a number there keeps its exact spelling.
    path = write(tmp_path / "years.csv", "question,answer\nWhich year?,1987\nWhich version?,1.10\n")
    assert load_qa_set(path).answers == ["1987", "1.10"]


def test_numeric_alpaca_input_is_error(tmp_path):
    path = write(tmp_path / "a.jsonl", json.dumps({"instruction": "Add one to", "input": 5, "output": "6"}) + "\n")
    with pytest.raises(InputError, match="field 'input' has type number"):
        load_qa_set(path)


def test_null_alpaca_input_is_no_input(tmp_path):
    path = write(tmp_path / "a.jsonl", json.dumps({"instruction": "Say hi.", "input": None, "output": "Hi."}) + "\n")
    assert load_qa_set(path).questions == ["Say hi."]


def test_empty_forget_set(tmp_path):
    path = write(tmp_path / "forget.json", "[]")
    with pytest.raises(InputError, match="the forget set is empty"):
        load_qa_set(path, role="forget")


def test_empty_file_is_empty_set(tmp_path):
    path = write(tmp_path / "retain.jsonl", "")
    with pytest.raises(InputError, match="the retain set is empty"):
        load_qa_set(path, role="retain")


def test_malformed_json_reports_line(tmp_path):
    path = write(tmp_path / "f.json", '[\n  {"question": "Q?", "answer": "A."},\n  {"question": "Q2?" "answer": "A2."}\n]')
    with pytest.raises(InputError, match="line 3"):
        load_qa_set(path)


def test_malformed_jsonl_reports_line(tmp_path):
    path = write(tmp_path / "f.jsonl", '{"question": "Q?", "answer": "A."}\n\n{"question": "Q2?", "answer": \n')
    with pytest.raises(InputError, match="line 3"):
        load_qa_set(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_qa_set(tmp_path / "nope.json", role="retain")


def test_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"question": "Qué?", "answer": "Sí."}]'.encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8"):
        load_qa_set(path)


def test_unknown_fields_are_reported(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"q": "Q?", "a": "A."}]))
    with pytest.raises(InputError, match="--question-field"):
        load_qa_set(path)


def test_all_problems_listed_by_inspect(tmp_path):
    records = [{"question": "Q?", "answer": ""}, {"question": "Q2?"}, {"question": "Q3?", "answer": "A3."}, {"question": "Q3?", "answer": "A3."}]
    report = inspect_file(write(tmp_path / "f.json", json.dumps(records)))
    assert not report.usable
    fatal = [problem for problem in report.problems if problem.fatal]
    assert [problem.record for problem in fatal] == [1, 2]
    assert report.duplicate_pairs == 1


def test_more_problems_count_is_singular(tmp_path):
    records = [{"question": "Q?", "answer": "A."}, {"question": "Q2?"}, {"question": "Q3?", "answer": 3}]
    path = write(tmp_path / "f.json", json.dumps(records))
    with pytest.raises(InputError) as raised:
        load_qa_set(path)
    assert "record 2: field 'answer' is missing (and 1 more problem;" in str(raised.value)


def test_inspect_counts_repeats_by_kind(tmp_path):
    records = [
        {"question": "Q?", "answer": "A."},
        {"question": "Q?", "answer": "A."},
        {"question": "Q?", "answer": "B."},
        {"question": "Q?", "answer": "B."},
        {"question": "R?", "answer": "A."},
    ]
    report = inspect_file(write(tmp_path / "f.json", json.dumps(records)))
    assert report.usable
    assert report.duplicate_pairs == 2
    assert report.duplicate_questions == 3
    assert report.conflicting_repeats == 1
    messages = [problem.message for problem in report.problems]
    assert messages == [
        "2 records repeat the question and answer of an earlier record exactly (records 2, 4)",
        "1 record repeats the question of an earlier record with a different answer (record 3)",
    ]
    assert not any(problem.fatal for problem in report.problems)


def test_inspect_lists_many_repeats_briefly(tmp_path):
    records = [{"question": "Q?", "answer": "A."}] * 9
    report = inspect_file(write(tmp_path / "f.json", json.dumps(records)))
    assert report.problems[0].message == (
        "8 records repeat the question and answer of an earlier record exactly (records 2, 3, 4, 5, 6 and 3 more)"
    )


def test_inspect_stats_over_loaded_records(tmp_path):
    records = [
        {"question": "Q?", "answer": 42},
        {"question": "Long question?", "answer": "Long answer here."},
        {"question": "Q?", "answer": "A."},
        {"question": "Q?", "answer": "A."},
    ]
    report = inspect_file(write(tmp_path / "f.json", json.dumps(records)))
    assert not report.usable
    assert report.record_count == 4
    assert report.pair_count == 3
    assert report.question_lengths.max_chars == len("Long question?")
    assert report.answer_lengths.min_chars == len("A.")
    assert report.duplicate_pairs == 1


def test_inspect_lists_errors_before_warnings(tmp_path):
    records = [{"question": "Q?", "answer": "A."}, {"question": "Q?", "answer": "A."}, {"question": "Q3?", "answer": True}]
    report = inspect_file(write(tmp_path / "f.json", json.dumps(records)))
    assert [(problem.fatal, problem.record) for problem in report.problems] == [(True, 3), (False, 0)]


def test_problem_described_without_path():
    assert Problem(3, "field 'answer' is missing").describe() == "record 3: field 'answer' is missing"
    assert Problem(0, "holds no records").describe() == "holds no records"
    assert Problem(3, "field 'answer' is missing").describe("f.json") == "f.json, record 3: field 'answer' is missing"


def test_inspect_files_flags_shared_questions(tmp_path):
    forget = write(tmp_path / "forget.json", json.dumps([
        {"question": "Who is A?", "answer": "A painter."},
        {"question": "Where does B live?", "answer": "In a town."},
    ]))
    retain = write(tmp_path / "retain.json", json.dumps([
        {"question": "What is 2+2?", "answer": "4."},
        {"question": "Where does B live?", "answer": "In a town."},
        {"question": "Where does B live?", "answer": "Somewhere else."},
    ]))
    forget_report, retain_report = inspect_files([forget, retain])

    # Sharing a question is a warning, so neither file becomes unusable.
    assert forget_report.usable
    assert retain_report.usable

    forget_messages = [problem.describe() for problem in forget_report.problems]
    assert f"record 2: question also appears in {retain}, records 2, 3" in forget_messages
    assert any(message.startswith(f"1 record has a question that also appears in {retain}.") for message in forget_messages)
    assert any("contradictory targets" in message for message in forget_messages)

    retain_messages = [problem.describe() for problem in retain_report.problems]
    assert f"record 2: question also appears in {forget}, record 2" in retain_messages
    assert f"record 3: question also appears in {forget}, record 2" in retain_messages
    assert any(message.startswith(f"2 records have a question that also appears in {forget}.") for message in retain_messages)


def test_inspect_files_single_file_unchanged(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"question": "Q?", "answer": "A."}, {"question": "Q?", "answer": "B."}]))
    (report,) = inspect_files([path])
    assert report.problems == inspect_file(path).problems


def test_inspect_files_same_file_twice_not_shared(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"question": "Q?", "answer": "A."}]))
    first, second = inspect_files([path, tmp_path / "." / "f.json"])
    assert first.problems == []
    assert second.problems == []


def test_inspect_files_skips_unreadable_file(tmp_path):
    good = write(tmp_path / "good.json", json.dumps([{"question": "Q?", "answer": "A."}]))
    good_report, missing_report = inspect_files([good, tmp_path / "missing.json"])
    assert good_report.problems == []
    assert not missing_report.usable


@pytest.mark.parametrize("bom", [False, True])
def test_non_ascii_loads_unchanged(tmp_path, bom):
    path = write(tmp_path / "forget.json", json.dumps(NON_ASCII_RECORDS, ensure_ascii=False), bom=bom)
    loaded = load_qa_set(path)
    assert loaded.questions == [record["question"] for record in NON_ASCII_RECORDS]
    assert loaded.answers == [record["answer"] for record in NON_ASCII_RECORDS]


def test_non_ascii_loads_under_c_locale(tmp_path):
    path = write(tmp_path / "forget.json", json.dumps(NON_ASCII_RECORDS, ensure_ascii=False), bom=True)
    script = (
        "import json, sys; from relearn_local.data import load_qa_set; "
        "s = load_qa_set(sys.argv[1]); "
        "sys.stdout.buffer.write(json.dumps([[p.question, p.answer] for p in s.pairs], ensure_ascii=False).encode('utf-8'))"
    )
    environment = {key: value for key, value in os.environ.items() if key not in {"PYTHONIOENCODING", "PYTHONUTF8"}}
    environment.update(LC_ALL="C", LANG="C")
    output = subprocess.run([sys.executable, "-c", script, str(path)], env=environment, capture_output=True, check=True)
    pairs = json.loads(output.stdout.decode("utf-8"))
    assert pairs == [[record["question"], record["answer"]] for record in NON_ASCII_RECORDS]


def test_record_ids_kept(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"id": "p-7", "question": "Q?", "answer": "A."}]))
    assert load_qa_set(path).pairs[0].id == "p-7"


def test_duplicate_ids_rejected(tmp_path):
    path = write(tmp_path / "f.json", json.dumps([{"id": 1, "question": "Q?", "answer": "A."}, {"id": 1, "question": "Q2?", "answer": "B."}]))
    with pytest.raises(InputError, match="repeats record 1"):
        load_qa_set(path)


@pytest.mark.skipif(not SHARED.exists(), reason="shared KnowUnDo data not present")
def test_knowundo_forget_set():
    report = inspect_file(SHARED / "unlearn_train.json")
    assert report.usable
    assert report.record_count == 400
    assert (report.question_field, report.answer_field) == ("text", "labels")
