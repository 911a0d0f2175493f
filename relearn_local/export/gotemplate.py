"""Render the subset of Go's text/template that Ollama TEMPLATE lines use, to check them without Ollama.

Supported: text, ``{{- ... -}}`` whitespace trimming, comments, ``if`` /
``else if`` / ``else`` / ``end``, ``range $i, $m := PIPE``, variable
declaration (``$x := ...``) and assignment (``$x = ...``), fields
(``.A``, ``$.A``, ``$m.A``), string, number and boolean literals,
parentheses, and the functions eq, ne, not, and, or, len, slice, index.
Anything else (pipes with ``|``, ``with``, ``define``, ``template``) raises
TemplateError, so a template this module accepts is rendered the way Go
renders it rather than approximately.

``render_ollama_prompt`` reproduces how Ollama (template/template.go,
``Template.Execute`` for templates that use ``.Messages``) prepares the
values: system messages joined with blank lines into ``.System``, and
consecutive messages of the same role merged with a blank line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

_WHITESPACE = " \t\r\n"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(ValueError):
    """The template is malformed, uses an unsupported construct, or failed while rendering."""


# Syntax tree -----------------------------------------------------------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Output:
    expression: Any


@dataclass
class Declare:
    name: str
    expression: Any
    assign: bool


@dataclass
class If:
    branches: list[tuple[Any, list]]
    otherwise: list = field(default_factory=list)


@dataclass
class Range:
    index_name: str | None
    value_name: str | None
    expression: Any
    body: list
    otherwise: list = field(default_factory=list)


@dataclass
class Call:
    function: str
    arguments: list


@dataclass
class Field:
    base: str | None  # None: the dot; "$": the root data; "$name": a variable
    path: tuple[str, ...]


@dataclass
class Literal:
    value: Any


Node = Union[Text, Output, Declare, If, Range]


# Lexing ----------------------------------------------------------------------------------------------------


def _split(source: str) -> list[tuple[str, str]]:
    """Split a template into ("text", ...) and ("action", ...) pieces, applying the trim markers."""
    pieces: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    while True:
        start = source.find("{{", position)
        text = source[position:] if start == -1 else source[position:start]
        if trim_next:
            text = text.lstrip(_WHITESPACE)
        if start == -1:
            pieces.append(("text", text))
            return pieces
        inner_start = start + 2
        if source.startswith("- ", inner_start) or source.startswith("-\n", inner_start) \
                or source.startswith("-\t", inner_start) or source.startswith("-\r", inner_start):
            text = text.rstrip(_WHITESPACE)
            inner_start += 1
        pieces.append(("text", text))
        end = _find_action_end(source, inner_start)
        inner = source[inner_start:end]
        trim_next = False
        if inner.endswith(" -") or inner.endswith("\n-") or inner.endswith("\t-") or inner.endswith("\r-"):
            inner = inner[:-1]
            trim_next = True
        pieces.append(("action", inner.strip(_WHITESPACE)))
        position = end + 2


def _find_action_end(source: str, start: int) -> int:
    position = start
    while position < len(source):
        character = source[position]
        if character in "\"`":
            closing = _string_end(source, position)
            position = closing + 1
            continue
        if source.startswith("}}", position):
            return position
        position += 1
    raise TemplateError(f"unclosed action starting at character {start}")


def _string_end(source: str, start: int) -> int:
    quote = source[start]
    position = start + 1
    while position < len(source):
        if quote == '"' and source[position] == "\\":
            position += 2
            continue
        if source[position] == quote:
            return position
        position += 1
    raise TemplateError(f"unterminated string literal at character {start}")


def _tokenize(action: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(action):
        character = action[position]
        if character in _WHITESPACE:
            position += 1
        elif character in "()":
            tokens.append(character)
            position += 1
        elif character in "\"`":
            end = _string_end(action, position)
            tokens.append(action[position:end + 1])
            position = end + 1
        elif action.startswith(":=", position):
            tokens.append(":=")
            position += 2
        elif character in "=,|":
            tokens.append(character)
            position += 1
        else:
            end = position
            while end < len(action) and action[end] not in _WHITESPACE + "()=,|\"`" and not action.startswith(":=", end):
                end += 1
            tokens.append(action[position:end])
            position = end
    return tokens


# Parsing ---------------------------------------------------------------------------------------------------


def parse(source: str) -> list[Node]:
    """Parse a template into a tree; raise TemplateError on unsupported or malformed input."""
    pieces = _split(source)
    nodes, terminator, _ = _parse_block(pieces, 0)
    if terminator is not None:
        raise TemplateError(f"unexpected {{{{ {terminator} }}}} outside any if or range")
    return nodes


def _parse_block(pieces: list[tuple[str, str]], index: int) -> tuple[list[Node], str | None, int]:
    """Parse until an ``end``/``else`` action; return the nodes, that action (None at the end) and the next index."""
    nodes: list[Node] = []
    while index < len(pieces):
        kind, content = pieces[index]
        index += 1
        if kind == "text":
            if content:
                nodes.append(Text(content))
            continue
        if content.startswith("/*"):
            if not content.endswith("*/"):
                raise TemplateError(f"malformed comment {{{{{content}}}}}")
            continue
        keyword = content.split(None, 1)[0] if content else ""
        if keyword in ("end", "else"):
            return nodes, content, index
        if keyword == "if":
            node, index = _parse_if(pieces, index, content[2:])
            nodes.append(node)
        elif keyword == "range":
            node, index = _parse_range(pieces, index, content[5:])
            nodes.append(node)
        elif keyword in ("with", "define", "template", "block", "break", "continue"):
            raise TemplateError(f"{{{{ {keyword} }}}} is not supported by this renderer")
        else:
            nodes.append(_parse_statement(content))
    return nodes, None, index


def _parse_if(pieces, index: int, condition: str) -> tuple[If, int]:
    node = If(branches=[])
    while True:
        body, terminator, index = _parse_block(pieces, index)
        node.branches.append((_parse_expression(_tokenize(condition)), body))
        if terminator is None:
            raise TemplateError("{{ if }} without {{ end }}")
        if terminator == "end":
            return node, index
        rest = terminator[4:].strip(_WHITESPACE)
        if rest.startswith("if ") or rest.startswith("if\t"):
            condition = rest[2:]
            continue
        if rest:
            raise TemplateError(f"unsupported {{{{ {terminator} }}}}")
        node.otherwise, terminator, index = _parse_block(pieces, index)
        if terminator != "end":
            raise TemplateError("{{ else }} without {{ end }}")
        return node, index


def _parse_range(pieces, index: int, header: str) -> tuple[Range, int]:
    tokens = _tokenize(header)
    index_name = value_name = None
    if ":=" in tokens:
        split = tokens.index(":=")
        names = [token for token in tokens[:split] if token != ","]
        if not 1 <= len(names) <= 2 or not all(name.startswith("$") for name in names):
            raise TemplateError(f"malformed range variables in {{{{ range {header} }}}}")
        if len(names) == 2:
            index_name, value_name = names
        else:
            value_name = names[0]
        tokens = tokens[split + 1:]
    body, terminator, index = _parse_block(pieces, index)
    node = Range(index_name, value_name, _parse_expression(tokens), body)
    if terminator is None:
        raise TemplateError("{{ range }} without {{ end }}")
    if terminator != "end":
        if terminator.strip(_WHITESPACE) != "else":
            raise TemplateError(f"unsupported {{{{ {terminator} }}}} in range")
        node.otherwise, terminator, index = _parse_block(pieces, index)
        if terminator != "end":
            raise TemplateError("{{ else }} without {{ end }}")
    return node, index


def _parse_statement(content: str) -> Node:
    tokens = _tokenize(content)
    if "|" in tokens:
        raise TemplateError(f"pipelines with '|' are not supported: {{{{ {content} }}}}")
    if len(tokens) >= 3 and tokens[0].startswith("$") and tokens[1] in (":=", "="):
        return Declare(tokens[0], _parse_expression(tokens[2:]), assign=tokens[1] == "=")
    return Output(_parse_expression(tokens))


def _parse_expression(tokens: list[str]) -> Any:
    if not tokens:
        raise TemplateError("empty expression")
    expression, rest = _parse_command(tokens)
    if rest:
        raise TemplateError(f"unexpected {' '.join(rest)!r} in expression")
    return expression


def _parse_command(tokens: list[str]) -> tuple[Any, list[str]]:
    """Parse ``operand`` or ``function arg...`` up to a closing parenthesis."""
    first = tokens[0]
    if _IDENTIFIER.fullmatch(first) and first not in ("true", "false", "nil"):
        arguments = []
        rest = tokens[1:]
        while rest and rest[0] != ")":
            argument, rest = _parse_operand(rest)
            arguments.append(argument)
        return Call(first, arguments), rest
    operand, rest = _parse_operand(tokens)
    return operand, rest


def _parse_operand(tokens: list[str]) -> tuple[Any, list[str]]:
    token = tokens[0]
    if token == "(":
        inner, rest = _parse_command(tokens[1:])
        if not rest or rest[0] != ")":
            raise TemplateError("missing ')'")
        return inner, rest[1:]
    if token[0] == '"':
        return Literal(_decode_string(token)), tokens[1:]
    if token[0] == "`":
        return Literal(token[1:-1]), tokens[1:]
    if token in ("true", "false"):
        return Literal(token == "true"), tokens[1:]
    if token == "nil":
        return Literal(None), tokens[1:]
    if re.fullmatch(r"-?[0-9]+", token):
        return Literal(int(token)), tokens[1:]
    if token.startswith("."):
        path = tuple(part for part in token.split(".")[1:] if part)
        return Field(None, path), tokens[1:]
    if token.startswith("$"):
        name, _, rest_path = token.partition(".")
        path = tuple(part for part in rest_path.split(".") if part)
        return Field(name, path), tokens[1:]
    if _IDENTIFIER.fullmatch(token):
        return Call(token, []), tokens[1:]
    raise TemplateError(f"unsupported operand {token!r}")


def _decode_string(token: str) -> str:
    escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
    body = token[1:-1]
    decoded = []
    position = 0
    while position < len(body):
        character = body[position]
        if character == "\\":
            escaped = body[position + 1:position + 2]
            if escaped not in escapes:
                raise TemplateError(f"unsupported escape \\{escaped} in {token}")
            decoded.append(escapes[escaped])
            position += 2
            continue
        decoded.append(character)
        position += 1
    return "".join(decoded)


# Execution -------------------------------------------------------------------------------------------------


def truth(value: Any) -> bool:
    """Go's notion of a true value: not false, zero, nil or empty."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def _and(*values: Any) -> Any:
    for value in values:
        if not truth(value):
            return value
    return values[-1]


def _or(*values: Any) -> Any:
    for value in values:
        if truth(value):
            return value
    return values[-1]


def _slice(value: Sequence, *bounds: int) -> Sequence:
    if len(bounds) > 2:
        raise TemplateError("slice takes at most two indexes here")
    start = bounds[0] if bounds else 0
    stop = bounds[1] if len(bounds) > 1 else len(value)
    if not 0 <= start <= stop <= len(value):
        raise TemplateError(f"slice index out of range: {start}:{stop} of {len(value)}")
    return value[start:stop]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "eq": lambda first, *others: any(first == other for other in others),
    "ne": lambda first, second: first != second,
    "not": lambda value: not truth(value),
    "and": _and,
    "or": _or,
    "len": len,
    "slice": _slice,
    "index": lambda value, key: value[key],
}


class _Scope:
    def __init__(self, root: Any):
        self.root = root
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def lookup(self, name: str) -> Any:
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise TemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise TemplateError(f"assignment to undeclared variable {name}")


def execute(nodes: list[Node], data: Any) -> str:
    """Render a parsed template with ``data`` as the dot."""
    output: list[str] = []
    _run(nodes, data, _Scope(data), output)
    return "".join(output)


def render(source: str, data: Any) -> str:
    return execute(parse(source), data)


def _run(nodes: list[Node], dot: Any, scope: _Scope, output: list[str]) -> None:
    for node in nodes:
        if isinstance(node, Text):
            output.append(node.text)
        elif isinstance(node, Output):
            output.append(_print(_evaluate(node.expression, dot, scope)))
        elif isinstance(node, Declare):
            value = _evaluate(node.expression, dot, scope)
            if node.assign:
                scope.assign(node.name, value)
            else:
                scope.frames[-1][node.name] = value
        elif isinstance(node, If):
            _run_if(node, dot, scope, output)
        elif isinstance(node, Range):
            _run_range(node, dot, scope, output)


def _run_if(node: If, dot: Any, scope: _Scope, output: list[str]) -> None:
    for condition, body in node.branches:
        if truth(_evaluate(condition, dot, scope)):
            _run_nested(body, dot, scope, output, {})
            return
    _run_nested(node.otherwise, dot, scope, output, {})


def _run_range(node: Range, dot: Any, scope: _Scope, output: list[str]) -> None:
    items = _evaluate(node.expression, dot, scope)
    if items is None:
        items = []
    if not isinstance(items, (list, tuple)):
        raise TemplateError(f"range over {type(items).__name__} is not supported")
    if not items:
        _run_nested(node.otherwise, dot, scope, output, {})
        return
    for position, item in enumerate(items):
        variables = {}
        if node.index_name:
            variables[node.index_name] = position
        if node.value_name:
            variables[node.value_name] = item
        _run_nested(node.body, item, scope, output, variables)


def _run_nested(body: list[Node], dot: Any, scope: _Scope, output: list[str], variables: dict[str, Any]) -> None:
    scope.frames.append(dict(variables))
    try:
        _run(body, dot, scope, output)
    finally:
        scope.frames.pop()


def _evaluate(expression: Any, dot: Any, scope: _Scope) -> Any:
    if isinstance(expression, Literal):
        return expression.value
    if isinstance(expression, Field):
        value = dot if expression.base is None else scope.lookup(expression.base)
        for name in expression.path:
            value = _field(value, name)
        return value
    if isinstance(expression, Call):
        function = FUNCTIONS.get(expression.function)
        if function is None:
            raise TemplateError(f"function {expression.function!r} is not supported")
        arguments = [_evaluate(argument, dot, scope) for argument in expression.arguments]
        try:
            return function(*arguments)
        except TypeError as exc:
            raise TemplateError(f"wrong arguments for {expression.function}: {exc}") from None
    raise TemplateError(f"cannot evaluate {expression!r}")


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        if name not in value:
            raise TemplateError(f"no field {name!r} in the template data")
        return value[name]
    if hasattr(value, name):
        return getattr(value, name)
    raise TemplateError(f"no field {name!r} on {type(value).__name__}")


def _print(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    raise TemplateError(f"cannot print a {type(value).__name__} value")


# Ollama ----------------------------------------------------------------------------------------------------


def collate_messages(messages: Sequence[Mapping[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Return Ollama's ``.System`` and ``.Messages`` for a conversation.

    System messages are joined with blank lines into the system text and stay
    in the list; consecutive messages of the same role are merged with a
    blank line.
    """
    system_parts: list[str] = []
    collated: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message.get("content", "")
        if role == "system":
            system_parts.append(content)
        if collated and collated[-1]["Role"] == role:
            collated[-1]["Content"] += "\n\n" + content
        else:
            collated.append({"Role": role, "Content": content})
    return "\n\n".join(system_parts), collated


def render_ollama_prompt(template: str, messages: Sequence[Mapping[str, str]]) -> str:
    """Render a ``.Messages`` TEMPLATE for a conversation the way Ollama prepares the prompt text."""
    if ".Messages" not in template:
        raise TemplateError("only templates that range over .Messages are supported")
    system, collated = collate_messages(messages)
    return render(template, {"System": system, "Messages": collated, "Response": "", "Tools": None})
