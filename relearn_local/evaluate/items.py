"""Evaluation items: questions from the forget and retain sets, or existing answers read from files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..data import load_qa_set, parse_records
from ..errors import InputError
from .scoring import FORGET, RETAIN

ROLES = (FORGET, RETAIN)
# Field names of an answers file (the ReLearn authors' generation output) and accepted aliases.
QUERY_FIELDS = ("query", "question")
GROUND_TRUTH_FIELDS = ("ground_truth",)
RESPONSE_FIELDS = ("generated_response",)


@dataclass
class EvalItem:
    """One question of the forget or retain set with its ground truth and, once generated, the answer."""

    role: str
    index: int
    id: str
    question: str
    ground_truth: str
    answer: Optional[str] = None
    generation: dict[str, Any] = field(default_factory=dict)
    generation_error: Optional[str] = None


def items_from_sets(forget: Optional[Path], retain: Optional[Path], limit: Optional[int],
                    question_field: Optional[str] = None, answer_field: Optional[str] = None) -> list[EvalItem]:
    """Load the forget and retain sets (either may be None) as items without answers."""
    items: list[EvalItem] = []
    for role, path in ((FORGET, forget), (RETAIN, retain)):
        if path is None:
            continue
        pairs = load_qa_set(path, role=role, question_field=question_field, answer_field=answer_field).pairs
        for index, pair in enumerate(pairs[:limit] if limit else pairs):
            items.append(EvalItem(role, index, pair.id, pair.question, pair.answer))
    return items


def parse_answer_spec(spec: str) -> tuple[Optional[str], Path]:
    """Split an --answers value into (role or None, path): 'forget=FILE', 'retain=FILE' or 'FILE'."""
    role, separator, rest = spec.partition("=")
    if separator and role in ROLES:
        return role, Path(rest).expanduser()
    return None, Path(spec).expanduser()


def items_from_answer_files(specs: Sequence[str], limit: Optional[int]) -> list[EvalItem]:
    """Read {query, ground_truth, generated_response} records; every problem names the file and record."""
    by_role: dict[str, list[EvalItem]] = {FORGET: [], RETAIN: []}
    for spec in specs:
        role, path = parse_answer_spec(spec)
        _, records = parse_records(path)
        if not records:
            raise InputError(f"the answers file {path} contains no records")
        for number, record in enumerate(records, start=1):
            item = _answer_record(path, number, record, role)
            item.index = len(by_role[item.role])
            by_role[item.role].append(item)
    items = [item for role in ROLES for item in (by_role[role][:limit] if limit else by_role[role])]
    if not items:
        raise InputError("the answers files contain no forget or retain records")
    return items


def _answer_record(path: Path, number: int, record: Any, role: Optional[str]) -> EvalItem:
    where = f"{path}, record {number}"
    if not isinstance(record, dict):
        raise InputError(f"{where}: is a JSON {type(record).__name__}; expected an object")
    record_role = role or record.get("set")
    if record_role not in ROLES:
        raise InputError(
            f"{where}: set is {record.get('set')!r}; give each record \"set\": \"forget\" or \"retain\", "
            "or pass the file as forget=FILE or retain=FILE"
        )
    query = _text_field(where, record, QUERY_FIELDS, allow_empty=False)
    ground_truth = _text_field(where, record, GROUND_TRUTH_FIELDS, allow_empty=False)
    response = _text_field(where, record, RESPONSE_FIELDS, allow_empty=True)
    record_id = record.get("id")
    item_id = str(record_id) if isinstance(record_id, (str, int)) and str(record_id) else str(number)
    return EvalItem(record_role, 0, item_id, query, ground_truth, answer=response)


def _text_field(where: str, record: dict[str, Any], names: Sequence[str], allow_empty: bool) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str):
                raise InputError(f"{where}: field {name!r} is {type(value).__name__}; expected a string")
            if not allow_empty and not value.strip():
                raise InputError(f"{where}: field {name!r} is empty")
            return value
    raise InputError(f"{where}: field {names[0]!r} is missing (record keys: {', '.join(sorted(record)) or 'none'})")
