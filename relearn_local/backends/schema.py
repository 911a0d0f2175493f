"""Flat JSON schemas for structured output, and validation of replies against them.

Some local servers mishandle ``$defs``/``$ref`` and nullable ``anyOf`` (what
Pydantic emits for nested or Optional fields), so every schema is flattened
before it is sent: references are inlined, ``anyOf [X, null]`` becomes X, and
``required`` is kept. The same flat schema drives Ollama's ``format=`` and the
llama.cpp grammar, and replies are validated here on our side as well, because
a server may ignore the schema.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

# Keys that only document a schema; dropping them keeps the grammar and the
# request small without changing what a valid reply is.
_DROPPED_KEYS = {"$defs", "definitions", "title", "default", "$schema", "examples"}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "null": (type(None),),
}


class SchemaError(ValueError):
    """A schema that cannot be made flat (recursive references, real unions)."""


def flatten_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``schema`` with references inlined and nullable unions collapsed.

    Raises SchemaError for recursive references and for unions of several
    non-null types, which have no flat equivalent.
    """
    definitions: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        for name, value in (schema.get(key) or {}).items():
            definitions[f"#/{key}/{name}"] = value
    return _flatten(schema, definitions, ())


def _flatten(node: Any, definitions: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_flatten(item, definitions, seen) for item in node]
    if not isinstance(node, Mapping):
        return node
    if "$ref" in node:
        reference = node["$ref"]
        if reference in seen:
            raise SchemaError(f"schema reference {reference} is recursive and cannot be flattened")
        if reference not in definitions:
            raise SchemaError(f"schema reference {reference} points at no definition")
        merged = {**definitions[reference], **{k: v for k, v in node.items() if k != "$ref"}}
        return _flatten(merged, definitions, (*seen, reference))
    for union_key in ("anyOf", "oneOf"):
        if union_key in node:
            return _flatten(_collapse_union(node, union_key), definitions, seen)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        return _flatten(merged, definitions, seen)
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "type" and isinstance(value, list):
            value = _single_type(value)
        if key == "properties":
            flat[key] = {name: _flatten(item, definitions, seen) for name, item in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            flat[key] = _flatten(value, definitions, seen)
        else:
            flat[key] = copy.deepcopy(value)
    return flat


def _collapse_union(node: Mapping[str, Any], union_key: str) -> dict[str, Any]:
    options = [option for option in node[union_key] if option.get("type") != "null"]
    if len(options) != 1:
        raise SchemaError(
            f"schema {union_key} with {len(options)} non-null alternatives has no flat form; "
            "use one type per field"
        )
    rest = {key: value for key, value in node.items() if key != union_key}
    return {**options[0], **rest}


def _single_type(types: list[str]) -> str:
    kept = [name for name in types if name != "null"]
    if len(kept) != 1:
        raise SchemaError(f"schema type {types} has no flat form; use one type per field")
    return kept[0]


def is_flat(schema: Any) -> bool:
    """Tell whether ``schema`` contains no ``$ref``, ``$defs``, ``definitions``, ``anyOf``, ``oneOf`` or ``allOf``."""
    if isinstance(schema, list):
        return all(is_flat(item) for item in schema)
    if not isinstance(schema, Mapping):
        return True
    if set(schema) & {"$ref", "$defs", "definitions", "anyOf", "oneOf", "allOf"}:
        return False
    return all(is_flat(value) for value in schema.values())


def validate(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Check ``value`` against a flat schema; return one message per problem, empty when valid.

    Covers what the schemas of this package use: types, ``required``,
    ``properties``, ``items``, ``enum``, string and array lengths and number
    bounds. Extra object keys are allowed unless ``additionalProperties`` is false.
    """
    problems: list[str] = []
    expected = schema.get("type")
    if expected is not None and not _has_type(value, expected):
        return [f"{path}: expected {expected}, found {_type_name(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        problems.extend(_validate_object(value, schema, path))
    elif isinstance(value, list):
        problems.extend(_validate_array(value, schema, path))
    elif isinstance(value, str):
        problems.extend(_validate_length(len(value), schema, path, "characters", "minLength", "maxLength"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: {value} is above the maximum {schema['maximum']}")
    return problems


def _validate_object(value: dict, schema: Mapping[str, Any], path: str) -> list[str]:
    problems = [f"{path}.{name}: required field is missing" for name in schema.get("required", ()) if name not in value]
    properties = schema.get("properties", {})
    for name, item in value.items():
        if name in properties:
            problems.extend(validate(item, properties[name], f"{path}.{name}"))
        elif schema.get("additionalProperties") is False:
            problems.append(f"{path}.{name}: unexpected field")
    return problems


def _validate_array(value: list, schema: Mapping[str, Any], path: str) -> list[str]:
    problems = _validate_length(len(value), schema, path, "items", "minItems", "maxItems")
    item_schema = schema.get("items")
    if isinstance(item_schema, Mapping):
        for index, item in enumerate(value):
            problems.extend(validate(item, item_schema, f"{path}[{index}]"))
    return problems


def _validate_length(length: int, schema: Mapping[str, Any], path: str, unit: str,
                     minimum_key: str, maximum_key: str) -> list[str]:
    problems = []
    if minimum_key in schema and length < schema[minimum_key]:
        problems.append(f"{path}: has {length} {unit}, fewer than {schema[minimum_key]}")
    if maximum_key in schema and length > schema[maximum_key]:
        problems.append(f"{path}: has {length} {unit}, more than {schema[maximum_key]}")
    return problems


def _has_type(value: Any, expected: str | Iterable[str]) -> bool:
    names = [expected] if isinstance(expected, str) else list(expected)
    for name in names:
        python_types = _JSON_TYPES.get(name)
        if python_types is None:
            continue
        if name in ("integer", "number") and isinstance(value, bool):
            continue
        if name == "integer" and isinstance(value, float):
            if value.is_integer():
                return True
            continue
        if isinstance(value, python_types):
            return True
    return False


def _type_name(value: Any) -> str:
    for name, python_types in _JSON_TYPES.items():
        if name in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, python_types):
            return name
    return type(value).__name__


def string_field(min_length: int = 1, max_length: int | None = None, description: str | None = None) -> dict[str, Any]:
    """Return a string property with length bounds (bounds keep small models from running on)."""
    field: dict[str, Any] = {"type": "string", "minLength": min_length}
    if max_length is not None:
        field["maxLength"] = max_length
    if description:
        field["description"] = description
    return field


def object_schema(properties: Mapping[str, Mapping[str, Any]], required: Iterable[str] | None = None) -> dict[str, Any]:
    """Return a flat object schema; every property is required unless ``required`` lists others."""
    return {
        "type": "object",
        "properties": {name: dict(value) for name, value in properties.items()},
        "required": list(properties) if required is None else list(required),
    }
