"""Parse structured replies from local models that do not always return clean JSON.

Small models in JSON mode pad a valid object with whitespace, wrap it in a
code fence with prose around it, put a ``<think>`` block first, return ``{}``
or stop in the middle of a string. ``parse_reply`` recovers the first three
and raises ReplyError for the rest, so that an unusable reply is counted as an
error and never read as an answer.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from .schema import validate

# Reasoning models wrap their reasoning in one of these tags before the answer.
_THINK_BLOCK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.DOTALL | re.IGNORECASE)
_OPEN_THINK = re.compile(r"<(think|thinking|reasoning)>", re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
# How many "{" positions are tried before the reply is declared not JSON.
_MAX_START_POSITIONS = 64

_decoder = json.JSONDecoder()


class ReplyError(ValueError):
    """A reply that contains no usable JSON object.

    ``kind`` is one of: empty, unfinished_think, truncated, not_json,
    not_object, schema.
    """

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def strip_reasoning(text: str) -> str:
    """Remove complete ``<think>...</think>`` blocks; raise ReplyError when one is left open."""
    stripped = _THINK_BLOCK.sub("", text)
    if _OPEN_THINK.search(stripped):
        raise ReplyError("unfinished_think", "the reply ends inside a <think> block")
    return stripped


def extract_json_object(text: str) -> dict[str, Any]:
    """Return the first JSON object in ``text`` after removing reasoning blocks and code fences.

    Text after the object (spaces, prose, a second object) is ignored.
    """
    if not text or not text.strip():
        raise ReplyError("empty", "the reply is empty")
    body = strip_reasoning(text)
    _reject_other_json_values(body)
    for fenced in _FENCE.findall(body):
        found = _first_object(fenced)
        if found is not None:
            return found
    found = _first_object(body)
    if found is not None:
        return found
    start = body.find("{")
    if start == -1:
        raise ReplyError("not_json", f"no JSON object in the reply: {_preview(body)}")
    if _looks_truncated(body[start:]):
        raise ReplyError("truncated", f"the JSON object is cut off: {_preview(body[start:], tail=True)}")
    raise ReplyError("not_json", f"malformed JSON: {_preview(body[start:])}")


def _reject_other_json_values(body: str) -> None:
    """Raise ReplyError when the whole reply is a JSON value other than an object (an array, a number)."""
    stripped = body.strip().lstrip("\ufeff")
    if not stripped or stripped[0] == "{":
        return
    try:
        value, end = _decoder.raw_decode(stripped)
    except json.JSONDecodeError:
        return
    if not isinstance(value, dict) and not stripped[end:].strip():
        raise ReplyError("not_object", f"expected a JSON object, found {_preview(stripped)}")


def _first_object(text: str) -> dict[str, Any] | None:
    position = text.find("{")
    attempts = 0
    while position != -1 and attempts < _MAX_START_POSITIONS:
        try:
            value, _ = _decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        attempts += 1
        position = text.find("{", position + 1)
    return None


def _looks_truncated(fragment: str) -> bool:
    """Tell whether a JSON fragment ends before its brackets or strings close."""
    depth = 0
    in_string = False
    escaped = False
    for character in fragment:
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
            continue
        if character == '"':
            in_string = True
        elif character in "{[":
            depth += 1
        elif character in "}]":
            depth -= 1
            if depth == 0:
                return False
    return in_string or depth > 0


def _preview(text: str, tail: bool = False, limit: int = 80) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return repr(flat)
    return repr("..." + flat[-limit:]) if tail else repr(flat[:limit] + "...")


def parse_reply(text: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """Extract the JSON object from a reply and validate it against a flat schema.

    A reply missing a required field, or with a field of the wrong type, raises
    ReplyError with kind "schema". So does ``{}`` whenever the schema requires
    anything.
    """
    value = extract_json_object(text)
    problems = validate(value, schema)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ReplyError("schema", "; ".join(problems[:3]) + more)
    return value
