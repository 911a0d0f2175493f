"""Parsing of structured replies from small local models, and flat schemas validated on our side."""

from __future__ import annotations

from typing import Optional

import pytest
from pydantic import BaseModel

from relearn_local.augment.prompts import answers_schema, judge_schema, variants_schema
from relearn_local.backends.replies import ReplyError, extract_json_object, parse_reply
from relearn_local.backends.schema import SchemaError, flatten_schema, is_flat, validate

SCHEMA = {
    "type": "object",
    "properties": {"leaks": {"type": "boolean"}, "reason": {"type": "string", "minLength": 1}},
    "required": ["leaks", "reason"],
}
GOOD = '{"leaks": false, "reason": "no private fact"}'

PARSED = [
    (GOOD, "plain JSON"),
    (GOOD + " " * 5000, "valid JSON followed by thousands of spaces"),
    (GOOD + "\n\n\n\t  \n", "trailing newlines and tabs"),
    ("Sure! Here is the verdict:\n```json\n" + GOOD + "\n```\nLet me know if you need more.", "prose around a fenced block"),
    ("```\n" + GOOD + "\n```", "fence without a language"),
    ("<think>The answer says nothing about the address {maybe}.</think>\n" + GOOD, "a think block first"),
    ("<think>\nline one\nline two\n</think>```json\n" + GOOD + "```", "think block and a fence"),
    ("The verdict is " + GOOD + " as requested.", "prose around bare JSON"),
    ('{not json} then ' + GOOD, "a brace pair before the real object"),
    (GOOD + GOOD, "two objects: the first counts"),
    ('\ufeff' + GOOD, "a byte-order mark before the JSON"),
]


@pytest.mark.parametrize("text, reason", PARSED, ids=[row[1] for row in PARSED])
def test_parse_reply_recovers(text, reason):
    assert parse_reply(text, SCHEMA) == {"leaks": False, "reason": "no private fact"}, reason


REJECTED = [
    ("{}", "schema", "an empty object misses required fields"),
    ('{"leaks": false, "reason": "no priv', "truncated", "cut off inside a string"),
    ('{"leaks": false, "reason": "fine"', "truncated", "cut off before the closing brace"),
    ('```json\n{"leaks": tru', "truncated", "cut off inside a fence"),
    ("", "empty", "an empty reply"),
    ("   \n  ", "empty", "only whitespace"),
    ("I think it does not leak.", "not_json", "prose without JSON"),
    ("<think>still thinking about it", "unfinished_think", "an unfinished think block"),
    ('[{"leaks": false}]', "not_object", "an array instead of an object"),
    ('{"leaks": "no", "reason": "x"}', "schema", "a string where a boolean belongs"),
    ('{"leaks": false}', "schema", "a required field missing"),
    ('{"leaks": false, "reason": ""}', "schema", "a string below its minimum length"),
    ("{'leaks': False, 'reason': 'x'}", "not_json", "Python syntax instead of JSON"),
]


@pytest.mark.parametrize("text, kind, reason", REJECTED, ids=[row[2] for row in REJECTED])
def test_parse_reply_rejects(text, kind, reason):
    with pytest.raises(ReplyError) as caught:
        parse_reply(text, SCHEMA)
    assert caught.value.kind == kind, reason


def test_extract_ignores_schema():
    assert extract_json_object("{}") == {}


class Detail(BaseModel):
    reason: str
    leaks: bool


class Reply(BaseModel):
    a1: Detail
    a2: Optional[Detail] = None
    note: Optional[str] = None
    count: int | None = None


def test_flatten_pydantic_schema():
    schema = Reply.model_json_schema()
    assert "$defs" in schema
    flat = flatten_schema(schema)
    assert is_flat(flat)
    assert flat["required"] == ["a1"]
    assert flat["properties"]["a1"]["required"] == ["reason", "leaks"]
    assert flat["properties"]["a2"]["properties"]["leaks"] == {"type": "boolean"}
    assert flat["properties"]["note"] == {"type": "string"}
    assert flat["properties"]["count"] == {"type": "integer"}


def test_flat_schema_still_validates_required():
    flat = flatten_schema(Reply.model_json_schema())
    assert validate({"a1": {"reason": "r", "leaks": True}}, flat) == []
    problems = validate({"a1": {"reason": "r"}}, flat)
    assert problems == ["$.a1.leaks: required field is missing"]
    assert validate({}, flat) == ["$.a1: required field is missing"]


def test_flatten_rejects_real_unions():
    schema = {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}}
    with pytest.raises(SchemaError):
        flatten_schema(schema)


def test_flatten_rejects_recursion():
    schema = {"$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
              "$ref": "#/$defs/Node"}
    with pytest.raises(SchemaError):
        flatten_schema(schema)


def test_flatten_type_list_with_null():
    assert flatten_schema({"type": ["string", "null"]}) == {"type": "string"}


VALIDATION = [
    ({"type": "integer"}, 3, True, "an integer"),
    ({"type": "integer"}, 3.0, True, "a float with no fraction counts as an integer"),
    ({"type": "integer"}, True, False, "a boolean is not an integer"),
    ({"type": "number"}, 2.5, True, "a float"),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 2}, ["a", "b", "c"], False, "too many items"),
    ({"type": "array", "items": {"type": "string"}}, ["a", 1], False, "an item of the wrong type"),
    ({"type": "string", "enum": ["a", "b"]}, "c", False, "outside the enum"),
    ({"type": "object", "properties": {}, "additionalProperties": False}, {"x": 1}, False, "an unexpected field"),
    ({"type": "object", "properties": {}}, {"x": 1}, True, "extra fields are allowed by default"),
    ({"type": "number", "minimum": 0, "maximum": 1}, 1.5, False, "above the maximum"),
]


@pytest.mark.parametrize("schema, value, valid, reason", VALIDATION, ids=[row[3] for row in VALIDATION])
def test_validate(schema, value, valid, reason):
    assert (validate(value, schema) == []) is valid, reason


@pytest.mark.parametrize("schema", [variants_schema(["rephrase", "context", "noise", "reverse"]),
                                    answers_schema(["q0", "q1"]), judge_schema(["a1", "a2"])])
def test_augment_schemas_are_flat_and_bounded(schema):
    assert is_flat(schema)
    assert schema["required"] == list(schema["properties"])
    strings = [value for value in schema["properties"].values() if value.get("type") == "string"]
    for field in strings:
        assert "maxLength" in field
