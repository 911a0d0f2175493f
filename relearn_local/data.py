"""Load forget and retain sets: question/answer pairs from JSON, JSON Lines, CSV or a saved dataset.

The format is sniffed from the content and the question/answer fields are
detected from the records, never from the file name. Every problem names the
file and the 1-based record number. Nothing is dropped or stripped silently:
a record that cannot be used is an error, not a skip.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import InputError

logger = logging.getLogger(__name__)

# Field pairs recognised in records, in priority order.
FIELD_PAIRS: tuple[tuple[str, str], ...] = (
    ("question", "answer"),
    ("text", "labels"),
    ("prompt", "response"),
    ("instruction", "output"),
)

# The Alpaca layout carries part of the question in "input"; it is appended
# to the instruction, separated by a blank line, when non-empty.
ALPACA_INPUT_FIELD = "input"

FORMAT_JSON = "json"
FORMAT_JSONL = "jsonl"
FORMAT_CSV = "csv"
FORMAT_DATASET = "datasets"


@dataclass(frozen=True)
class QAPair:
    """One question/answer pair. ``id`` is the record's own "id" field when present, else its 1-based number."""

    id: str
    question: str
    answer: str
    record: int


@dataclass(frozen=True)
class Problem:
    """A defect in one record (``record`` is 1-based; 0 means the file as a whole)."""

    record: int
    message: str
    fatal: bool = True

    def describe(self, path: Path | str | None = None) -> str:
        """Format the problem as one line, prefixed with ``path`` when given.

        Leave ``path`` out where the file is already named, such as in a per-file table.
        """
        if path is None:
            return self.message if self.record == 0 else f"record {self.record}: {self.message}"
        where = f"{path}" if self.record == 0 else f"{path}, record {self.record}"
        return f"{where}: {self.message}"


@dataclass
class QASet:
    """A loaded forget or retain set with what was detected about its file."""

    path: Path
    format: str
    question_field: str
    answer_field: str
    pairs: list[QAPair]
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def questions(self) -> list[str]:
        return [pair.question for pair in self.pairs]

    @property
    def answers(self) -> list[str]:
        return [pair.answer for pair in self.pairs]


@dataclass
class LengthStats:
    """Character and word counts over a list of texts."""

    min_chars: int
    median_chars: float
    max_chars: int
    mean_words: float

    @classmethod
    def of(cls, texts: Sequence[str]) -> "LengthStats":
        if not texts:
            return cls(0, 0.0, 0, 0.0)
        chars = [len(text) for text in texts]
        words = [len(text.split()) for text in texts]
        return cls(min(chars), float(statistics.median(chars)), max(chars), statistics.fmean(words))


@dataclass
class InspectReport:
    """Findings about one file, as ``relearn-local inspect`` prints them.

    Lengths and duplicate counts cover only the ``pair_count`` records that
    gave a question/answer pair, so they stay available when other records
    have errors. ``problems`` lists errors before warnings, each group by
    record number.
    """

    path: Path
    format: str | None
    record_count: int
    question_field: str | None
    answer_field: str | None
    question_lengths: LengthStats | None
    answer_lengths: LengthStats | None
    # Records that repeat the question and answer of an earlier record exactly.
    duplicate_pairs: int
    # Records that repeat the question of an earlier record, whatever their
    # answer, so this count includes ``duplicate_pairs``.
    duplicate_questions: int
    problems: list[Problem]
    pair_count: int = 0

    @property
    def usable(self) -> bool:
        return self.record_count > 0 and not any(problem.fatal for problem in self.problems)

    @property
    def conflicting_repeats(self) -> int:
        """Records that repeat the question of an earlier record with a different answer."""
        return self.duplicate_questions - self.duplicate_pairs


class _FileLevelError(Exception):
    """Raised inside the parser for problems that stop reading the whole file."""


def read_text(path: Path) -> str:
    """Read ``path`` as UTF-8 whatever the locale, dropping a leading BOM."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}); check the path and permissions") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: is not valid UTF-8 (invalid byte at offset {exc.start}); save the file as UTF-8"
        ) from exc


def sniff_format(path: Path, text: str | None = None) -> str:
    """Tell the file format from the content: a saved dataset folder, JSON, JSON Lines or CSV."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return FORMAT_DATASET
        raise InputError(f"{path}: is a folder but not a dataset saved with datasets' save_to_disk")
    if text is None:
        text = read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        return FORMAT_JSON
    if stripped.startswith("{"):
        # A whole-file object is a single JSON record; anything else starting
        # with "{" is taken as JSON Lines.
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return FORMAT_JSONL
        return FORMAT_JSON if isinstance(value, dict) and "\n" in stripped.strip() else FORMAT_JSONL
    return FORMAT_CSV


def _parse_json(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _FileLevelError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise _FileLevelError(f"expected a JSON array of records, found a JSON {type(value).__name__}")
    return value


def _parse_jsonl(text: str) -> tuple[list[Any], list[int]]:
    """Return the records and the line number each came from."""
    records: list[Any] = []
    lines: list[int] = []
    for line_number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise _FileLevelError(
                f"malformed JSON Lines at line {line_number}, column {exc.colno}: {exc.msg}"
            ) from exc
        lines.append(line_number)
    return records, lines


def _parse_csv(text: str) -> list[Any]:
    sample = text[:8192]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    if not reader.fieldnames:
        return []
    records = []
    for row in reader:
        if None in row:
            raise _FileLevelError(f"CSV row {reader.line_num} has more cells than the header")
        records.append(dict(row))
    return records


def _load_dataset_records(path: Path) -> list[Any]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise InputError(f"{path}: reading a saved dataset needs the 'datasets' package") from exc
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            split = "train"
        elif len(loaded) == 1:
            split = next(iter(loaded))
        else:
            raise InputError(
                f"{path}: holds several splits ({', '.join(loaded)}) and none is 'train'; "
                "save the split you want on its own"
            )
        logger.info("%s: using split %r", path, split)
        loaded = loaded[split]
    return [dict(row) for row in loaded]


def parse_records(path: Path) -> tuple[str, list[Any]]:
    """Read the raw records of ``path`` and return (format, records). Raises InputError."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        fmt = sniff_format(path)
        return fmt, _load_dataset_records(path)
    text = read_text(path)
    fmt = sniff_format(path, text)
    try:
        if fmt == FORMAT_JSON:
            return fmt, _parse_json(text)
        if fmt == FORMAT_JSONL:
            return fmt, _parse_jsonl(text)[0]
        return fmt, _parse_csv(text)
    except _FileLevelError as exc:
        raise InputError(f"{path}: {exc}") from None


def detect_fields(records: Sequence[Any]) -> tuple[str, str] | None:
    """Pick the question/answer field pair most records carry, in FIELD_PAIRS order on ties."""
    counts: Counter[tuple[str, str]] = Counter()
    for record in records:
        if not isinstance(record, dict):
            continue
        for pair in FIELD_PAIRS:
            if pair[0] in record and pair[1] in record:
                counts[pair] += 1
    if not counts:
        return None
    best = max(counts.values())
    for pair in FIELD_PAIRS:
        if counts.get(pair) == best:
            return pair
    return None


def format_count(count: int, singular: str, plural: str | None = None) -> str:
    """Format ``count`` with the noun in the matching number: "1 record", "3 records"."""
    noun = singular if count == 1 else (plural or singular + "s")
    return f"{count} {noun}"


def _json_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _text_value(value: Any, field_name: str) -> tuple[str | None, str | None]:
    """Return (text, problem) for one field value."""
    if value is None:
        return None, f"field {field_name!r} is null"
    if isinstance(value, bool):
        return None, f"field {field_name!r} is a boolean; expected a string"
    if isinstance(value, (int, float)):
        # A number is not turned into text because its spelling is lost on
        # parsing: JSON 1.10 loads as 1.1 and 1e3 as 1000.0.
        return None, (
            f"field {field_name!r} is a number ({json.dumps(value)}); expected a string "
            "(put the value in quotes)"
        )
    if isinstance(value, (list, tuple)):
        return None, (
            f"field {field_name!r} is a list of {len(value)} items; expected a string "
            "(write one record per answer)"
        )
    if isinstance(value, dict):
        return None, f"field {field_name!r} is an object; expected a string"
    if not isinstance(value, str):
        return None, f"field {field_name!r} has type {type(value).__name__}; expected a string"
    if not value.strip():
        return None, f"field {field_name!r} is empty"
    return value, None


def records_to_pairs(
    records: Sequence[Any], question_field: str, answer_field: str
) -> tuple[list[QAPair], list[Problem]]:
    """Turn raw records into pairs, collecting one problem per defective record field."""
    pairs: list[QAPair] = []
    problems: list[Problem] = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            problems.append(Problem(number, f"is a JSON {type(record).__name__}; expected an object"))
            continue
        values: dict[str, str] = {}
        for name in (question_field, answer_field):
            if name not in record:
                problems.append(Problem(number, f"field {name!r} is missing"))
                continue
            text, problem = _text_value(record[name], name)
            if problem:
                problems.append(Problem(number, problem))
            else:
                values[name] = text  # type: ignore[assignment]
        extra_input = record.get(ALPACA_INPUT_FIELD) if question_field == "instruction" else None
        if extra_input is not None and not isinstance(extra_input, str):
            # Dropping a non-text input would silently shorten the question.
            problems.append(Problem(
                number, f"field {ALPACA_INPUT_FIELD!r} has type {_json_type_name(extra_input)}; expected a string or null"
            ))
            continue
        if len(values) < 2:
            continue
        question = values[question_field]
        if extra_input and extra_input.strip():
            question = f"{question}\n\n{extra_input}"
        record_id = record.get("id")
        pair_id = str(record_id) if isinstance(record_id, (str, int)) and str(record_id) else str(number)
        pairs.append(QAPair(id=pair_id, question=question, answer=values[answer_field], record=number))
    return pairs, problems


def _repeated_records(pairs: Iterable[QAPair]) -> tuple[list[int], list[int]]:
    """Return (exact, conflicting) record numbers of repeated questions.

    ``exact`` lists records whose question and answer both match an earlier
    record. ``conflicting`` lists records whose question matches an earlier
    record but whose answer matches none of the earlier ones for it.
    """
    seen_pairs: set[tuple[str, str]] = set()
    seen_questions: set[str] = set()
    exact: list[int] = []
    conflicting: list[int] = []
    for pair in pairs:
        if (pair.question, pair.answer) in seen_pairs:
            exact.append(pair.record)
        elif pair.question in seen_questions:
            conflicting.append(pair.record)
        seen_pairs.add((pair.question, pair.answer))
        seen_questions.add(pair.question)
    return exact, conflicting


def _list_records(numbers: Sequence[int], max_listed: int = 5) -> str:
    """Format record numbers as "record 4" or "records 4, 9, 12 and 3 more"."""
    listed = ", ".join(str(number) for number in numbers[:max_listed])
    more = f" and {len(numbers) - max_listed} more" if len(numbers) > max_listed else ""
    return f"{'record' if len(numbers) == 1 else 'records'} {listed}{more}"


def describe_repeats(exact: int, conflicting: int) -> list[str]:
    """Describe the two kinds of repeated records that ``_repeated_records`` counts, one phrase per nonzero count."""
    phrases = []
    if exact:
        verb = "repeats" if exact == 1 else "repeat"
        phrases.append(f"{format_count(exact, 'record')} {verb} the question and answer of an earlier record exactly")
    if conflicting:
        verb = "repeats" if conflicting == 1 else "repeat"
        phrases.append(
            f"{format_count(conflicting, 'record')} {verb} the question of an earlier record with a different answer"
        )
    return phrases


def _repeat_problems(exact: Sequence[int], conflicting: Sequence[int]) -> list[Problem]:
    numbers = [records for records in (exact, conflicting) if records]
    return [
        Problem(0, f"{phrase} ({_list_records(records)})", fatal=False)
        for phrase, records in zip(describe_repeats(len(exact), len(conflicting)), numbers)
    ]


def _problem_order(problem: Problem) -> tuple[bool, int]:
    """Sort key that puts errors before warnings, and whole-file problems before record problems within each."""
    return (not problem.fatal, problem.record)


def _duplicate_id_problems(pairs: Sequence[QAPair]) -> list[Problem]:
    seen: dict[str, int] = {}
    problems = []
    for pair in pairs:
        if pair.id in seen:
            problems.append(Problem(pair.record, f"id {pair.id!r} repeats record {seen[pair.id]}"))
        else:
            seen[pair.id] = pair.record
    return problems


def inspect_file(
    path: Path | str, question_field: str | None = None, answer_field: str | None = None
) -> InspectReport:
    """Examine a file and report every problem found, without raising on bad records."""
    return _examine(Path(path), question_field, answer_field)[0]


def inspect_files(
    paths: Sequence[Path | str], question_field: str | None = None, answer_field: str | None = None
) -> list[InspectReport]:
    """Examine each file like ``inspect_file`` and also report questions found in more than one of them.

    A question shared between files is a warning, so it leaves ``usable``
    unchanged. The files carry no role, and two parts of one forget set may
    share questions harmlessly. The warning message explains that a question
    in both the forget set and the retain set gives training contradictory targets.
    Questions are compared as exact text, like the repeats within one file.
    """
    examined = [_examine(Path(path), question_field, answer_field) for path in paths]
    for index, (report, pairs) in enumerate(examined):
        for other_report, other_pairs in examined[:index] + examined[index + 1:]:
            if _same_file(report.path, other_report.path):
                continue
            report.problems.extend(_shared_question_problems(pairs, other_pairs, other_report.path))
        report.problems.sort(key=_problem_order)
    return [report for report, _ in examined]


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve()
    except (OSError, RuntimeError):  # Python 3.11 raises RuntimeError on a symlink loop.
        return first == second


def _shared_question_problems(pairs: Sequence[QAPair], other_pairs: Sequence[QAPair], other_path: Path) -> list[Problem]:
    """Return one warning per record whose question is also in ``other_pairs``, plus a summary when there is any."""
    other_records: dict[str, list[int]] = {}
    for pair in other_pairs:
        other_records.setdefault(pair.question, []).append(pair.record)
    problems = [
        Problem(pair.record, f"question also appears in {other_path}, {_list_records(other_records[pair.question])}", fatal=False)
        for pair in pairs
        if pair.question in other_records
    ]
    if problems:
        verb = "has" if len(problems) == 1 else "have"
        summary = (
            f"{format_count(len(problems), 'record')} {verb} a question that also appears in {other_path}. "
            "If one file is the forget set and the other the retain set, training gets contradictory targets, "
            "so remove each such question from one of them"
        )
        problems.insert(0, Problem(0, summary, fatal=False))
    return problems


def _examine(
    path: Path, question_field: str | None, answer_field: str | None
) -> tuple[InspectReport, list[QAPair]]:
    try:
        fmt, records = parse_records(path)
    except InputError as exc:
        message = str(exc)
        prefix = f"{path}: "
        if message.startswith(prefix):
            message = message[len(prefix):]
        return InspectReport(path, None, 0, None, None, None, None, 0, 0, [Problem(0, message)], 0), []

    problems: list[Problem] = []
    fields = _choose_fields(records, question_field, answer_field)
    if fields is None:
        keys = sorted({key for record in records[:50] if isinstance(record, dict) for key in record})
        known = ", ".join(f"{q}/{a}" for q, a in FIELD_PAIRS)
        problems.append(
            Problem(
                0,
                f"no question/answer fields found (record keys: {', '.join(keys) or 'none'}; known pairs: {known}); "
                "pass --question-field and --answer-field",
            )
        )
        return InspectReport(path, fmt, len(records), None, None, None, None, 0, 0, problems, 0), []

    pairs, record_problems = records_to_pairs(records, *fields)
    problems.extend(record_problems)
    problems.extend(_duplicate_id_problems(pairs))
    if not records:
        problems.append(Problem(0, "holds no records"))
    exact_repeats, conflicting_repeats = _repeated_records(pairs)
    problems.extend(_repeat_problems(exact_repeats, conflicting_repeats))
    problems.sort(key=_problem_order)
    report = InspectReport(
        path=path,
        format=fmt,
        record_count=len(records),
        question_field=fields[0],
        answer_field=fields[1],
        question_lengths=LengthStats.of([pair.question for pair in pairs]),
        answer_lengths=LengthStats.of([pair.answer for pair in pairs]),
        duplicate_pairs=len(exact_repeats),
        duplicate_questions=len(exact_repeats) + len(conflicting_repeats),
        problems=problems,
        pair_count=len(pairs),
    )
    return report, pairs


def _choose_fields(
    records: Sequence[Any], question_field: str | None, answer_field: str | None
) -> tuple[str, str] | None:
    if question_field and answer_field:
        return question_field, answer_field
    detected = detect_fields(records)
    if question_field or answer_field:
        partner = {q: a for q, a in FIELD_PAIRS} | {a: q for q, a in FIELD_PAIRS}
        if question_field:
            return question_field, answer_field or (detected[1] if detected else partner.get(question_field, "answer"))
        return (detected[0] if detected else partner.get(answer_field or "", "question")), answer_field  # type: ignore[return-value]
    return detected


def load_qa_set(
    path: Path | str,
    role: str = "forget",
    question_field: str | None = None,
    answer_field: str | None = None,
) -> QASet:
    """Load a forget or retain set; raise InputError naming the file and record on any defect.

    ``role`` ("forget", "retain", ...) only shapes messages, such as
    "the forget set is empty".
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"the {role} set file was not found: {path}")
    report, pairs = _examine(path, question_field, answer_field)
    fatal = [problem for problem in report.problems if problem.fatal]
    if report.format is not None and report.record_count == 0:
        raise InputError(f"the {role} set is empty: {path} holds no records")
    if fatal:
        first = fatal[0].describe(path)
        more = ""
        if len(fatal) > 1:
            more = f" (and {format_count(len(fatal) - 1, 'more problem')}; run 'relearn-local inspect {path}' to list them)"
        raise InputError(f"invalid {role} set: {first}{more}")
    for problem in report.problems:
        logger.warning("%s", problem.describe(path))
    return QASet(
        path=path,
        format=report.format or "",
        question_field=report.question_field or "",
        answer_field=report.answer_field or "",
        pairs=pairs,
        problems=report.problems,
    )


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as UTF-8 JSON Lines without escaping non-ASCII text."""
    from .runs import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON Lines written by this package; raise InputError with the line on bad JSON."""
    try:
        records, _ = _parse_jsonl(read_text(path))
    except _FileLevelError as exc:
        raise InputError(f"{path}: {exc}") from None
    return records
