"""``relearn-local inspect`` output: the table beside errors, problem caps, wording, questions shared between files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from relearn_local.cli import cli


def write_records(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def run_inspect(*args: str):
    # A wide console keeps each table cell on one line, so a message can be matched whole.
    return CliRunner(env={"COLUMNS": "300"}).invoke(cli, ["inspect", *args])


def problem_lines(output: str) -> list[str]:
    """Return the text of the table lines that hold an error, a warning or the "... and N more" line."""
    cells = [line.split("│")[2].strip() for line in output.splitlines() if line.count("│") >= 3]
    return [cell for cell in cells if cell.startswith(("error: ", "warning: ", "... and "))]


def test_table_shown_beside_errors(tmp_path):
    path = write_records(tmp_path / "forget.json", [
        {"question": "q?", "answer": 42},
        {"question": "Who is A?", "answer": "A painter."},
        {"question": "Who is A?", "answer": "A painter."},
    ])
    result = run_inspect(str(path))
    assert result.exit_code == 2
    assert "records         │ 3 (2 loaded as question/answer pairs)" in result.output
    assert "question length │ 9-9 characters" in result.output
    assert "duplicates      │ 1 record repeats the question and answer of an earlier record exactly" in result.output
    assert "not usable (1 error)" in result.output
    assert problem_lines(result.output) == [
        "error: record 1: field 'answer' is a number (42); expected a string (put the value in quotes)",
        "warning: 1 record repeats the question and answer of an earlier record exactly (record 3)",
    ]


def test_problems_row_omits_path(tmp_path):
    path = write_records(tmp_path / "forget.json", [{"question": "Q?", "answer": True}, {"question": "Q2?"}])
    result = run_inspect(str(path))
    assert result.exit_code == 2
    # The table title names the file, and no problem line repeats it.
    assert result.output.count(str(path)) == 1
    assert problem_lines(result.output) == [
        "error: record 1: field 'answer' is a boolean; expected a string",
        "error: record 2: field 'answer' is missing",
    ]


def test_problems_capped_with_exact_count(tmp_path):
    records = [{"question": f"Q{number}?", "answer": ["a", "b"]} for number in range(500)]
    records.append({"question": "Fine?", "answer": "Fine."})
    path = write_records(tmp_path / "forget.json", records)
    result = run_inspect(str(path))
    assert result.exit_code == 2
    lines = problem_lines(result.output)
    assert len(lines) == 21
    assert lines[0].startswith("error: record 1: field 'answer' is a list of 2 items")
    assert lines[19].startswith("error: record 20: ")
    assert lines[20] == "... and 480 more problems (480 errors, 0 warnings); pass --max-problems 0 to list all"
    assert "not usable (500 errors)" in result.output


def test_max_problems_zero_lists_all(tmp_path):
    records = [{"question": f"Q{number}?", "answer": None} for number in range(30)]
    path = write_records(tmp_path / "forget.json", records)
    result = run_inspect(str(path), "--max-problems", "0")
    assert result.exit_code == 2
    lines = problem_lines(result.output)
    assert len(lines) == 30
    assert not any(line.startswith("... and") for line in lines)


def test_cap_counts_hidden_warnings(tmp_path):
    records = [{"question": "Q?", "answer": None}, {"question": "R?", "answer": "A."}, {"question": "R?", "answer": "B."}]
    path = write_records(tmp_path / "forget.json", records)
    result = run_inspect(str(path), "--max-problems", "1")
    assert problem_lines(result.output) == [
        "error: record 1: field 'answer' is null",
        "... and 1 more problem (0 errors, 1 warning); pass --max-problems 0 to list all",
    ]


def test_duplicates_wording(tmp_path):
    records = [
        {"question": "Q?", "answer": "A."},
        {"question": "Q?", "answer": "A."},
        {"question": "Q?", "answer": "A."},
        {"question": "Q?", "answer": "B."},
    ]
    result = run_inspect(str(write_records(tmp_path / "retain.json", records)))
    assert result.exit_code == 0
    assert (
        "duplicates      │ 2 records repeat the question and answer of an earlier record exactly; "
        "1 record repeats the question of an earlier record with a different answer"
    ) in result.output
    assert "1 records" not in result.output
    assert "usable (2 warnings)" in result.output


def test_no_duplicates_reads_none(tmp_path):
    path = write_records(tmp_path / "retain.json", [{"question": "Q?", "answer": "A."}])
    result = run_inspect(str(path))
    assert result.exit_code == 0
    assert "duplicates      │ none" in result.output
    assert "problems        │ none" in result.output


def test_shared_question_warned_in_both_files(tmp_path):
    forget = write_records(tmp_path / "forget.json", [
        {"question": "Who is A?", "answer": "A painter."},
        {"question": "Where does B live?", "answer": "In a town."},
    ])
    retain = write_records(tmp_path / "retain.json", [
        {"question": "Where does B live?", "answer": "In a town."},
        {"question": "What is 2+2?", "answer": "4."},
    ])
    result = run_inspect(str(forget), str(retain))

    # A shared question is a warning, so two otherwise valid files still exit 0.
    assert result.exit_code == 0
    lines = problem_lines(result.output)
    assert f"warning: record 2: question also appears in {retain}, record 1" in lines
    assert f"warning: record 1: question also appears in {forget}, record 2" in lines
    assert sum("training gets contradictory targets" in line for line in lines) == 2


def test_shared_question_not_checked_for_one_file(tmp_path):
    path = write_records(tmp_path / "forget.json", [{"question": "Q?", "answer": "A."}])
    result = run_inspect(str(path))
    assert result.exit_code == 0
    assert "also appears" not in result.output


def test_unusable_file_sets_exit_code_among_several(tmp_path):
    good = write_records(tmp_path / "retain.json", [{"question": "Q?", "answer": "A."}])
    bad = write_records(tmp_path / "forget.json", [{"question": "R?", "answer": 1}])
    result = run_inspect(str(good), str(bad))
    assert result.exit_code == 2
    assert "[green]" not in result.output
    assert "usable" in result.output
    assert "not usable (1 error)" in result.output


def test_unreadable_file_error_keeps_path(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"question": "Q?" "answer": "A."}]', encoding="utf-8")
    result = run_inspect(str(path))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}: malformed JSON at line 1")


def test_markup_in_path_printed_literally(tmp_path):
    # Rich would read "[bold]" in a title or cell as a style tag and drop it.
    forget = write_records(tmp_path / "forget[bold].json", [{"question": "Q?", "answer": "A."}])
    retain = write_records(tmp_path / "retain.json", [{"question": "Q?", "answer": "A."}])
    result = run_inspect(str(forget), str(retain))
    assert result.exit_code == 0
    assert str(forget) in [line.strip() for line in result.output.splitlines()]
    assert f"warning: record 1: question also appears in {forget}, record 1" in problem_lines(result.output)
