"""Ollama Modelfiles: the TEMPLATE built from the chat-format table, rendering from ``modelfiles/``, and parsing.

The TEMPLATE ranges over ``.Messages`` and renders, for any conversation,
exactly what ``ChatFormat.render`` renders. For one user turn it ends where
the answer begins. A closed assistant turn ends with the end-of-turn marker,
so one question and its answer render as ``prompt() + completion()``, the
text training supervised. It never writes the BOS string, because Ollama
prepends BOS itself when the GGUF sets ``tokenizer.ggml.add_bos_token``
(ollama model/vocabulary.go ``addSpecials``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from ..chat_formats import CHAT_FORMATS, ChatFormat
from ..errors import ExportError

MODELFILE_SUFFIX = ".Modelfile"


def ollama_template(chat_format: ChatFormat) -> str:
    """Build the Go TEMPLATE of a chat format from its markers.

    Actions that follow another action start with ``{{-`` so that the line
    break placed between them for readability is trimmed. Text that comes
    from the markers is never next to a trimming action, so no marker
    whitespace is lost.
    """
    markers = (chat_format.system_start, chat_format.user_start, chat_format.assistant_start,
               chat_format.turn_end, chat_format.turn_gap)
    if any("{{" in marker or "}}" in marker or '"""' in marker for marker in markers):
        raise ExportError(f"the {chat_format.family} chat markers contain template delimiters; cannot build a TEMPLATE")
    end, gap = chat_format.turn_end, chat_format.turn_gap
    parts: list[tuple[str, str]] = []

    def action(text: str) -> None:
        parts.append(("action", text))

    def text(value: str) -> None:
        if value:
            parts.append(("text", value))

    if chat_format.has_system_role:
        action("if .System")
        text(chat_format.system_start)
        action(".System")
        text(end + gap)
        action("end")
    else:
        # Families without a system role get the system text at the start of the first user turn.
        action("$system := .System")
    action("range $i, $m := .Messages")
    action("$last := eq (len (slice $.Messages $i)) 1")
    action('if eq $m.Role "user"')
    text(chat_format.user_start)
    if not chat_format.has_system_role:
        action("if $system")
        action("$system")
        text("\n\n")
        action("end")
        action('$system = ""')
    action("$m.Content")
    text(end + gap)
    action("if $last")
    text(chat_format.assistant_start)
    action("end")
    action('else if eq $m.Role "assistant"')
    text(chat_format.assistant_start)
    action("$m.Content")
    text(end)
    if gap:
        action("if not $last")
        text(gap)
        action("end")
    action("end")
    action("end")
    return _join_template(parts)


def _join_template(parts: list[tuple[str, str]]) -> str:
    pieces: list[str] = []
    previous = None
    for kind, value in parts:
        if kind == "text":
            pieces.append(value)
        elif previous in (None, "action"):
            pieces.append(("\n" if previous else "") + "{{- " + value + " }}")
        else:
            pieces.append("{{ " + value + " }}")
        previous = kind
    return "".join(pieces)


def modelfiles_dir() -> Path:
    """Return the folder of Modelfile templates (inside the installed package, or the checkout's modelfiles/)."""
    packaged = Path(str(resources.files("relearn_local") / "modelfiles"))
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "modelfiles"
    if checkout.is_dir():
        return checkout
    raise ExportError(
        "the Modelfile templates (modelfiles/*.Modelfile) are missing from this installation; reinstall relearn-local"
    )


def quote_value(value: str) -> str:
    """Quote a Modelfile value when it has spaces, quotes or line breaks; plain otherwise."""
    if '"""' in value:
        raise ExportError(f'cannot write {value!r} into a Modelfile: it contains """')
    if "\n" in value or '"' in value:
        return f'"""{value}"""'
    if any(character in value for character in " \t#") or value != value.strip():
        return f'"{value}"'
    return value


@dataclass
class ModelfileSpec:
    """Everything a Modelfile says; ``parameters`` and ``template`` are what ``ollama create`` receives too."""

    chat_format: ChatFormat
    name: str
    model_path: Path
    adapter_path: Optional[Path] = None
    system: Optional[str] = None
    num_ctx: int = 4096
    temperature: float = 0.0
    top_k: int = 64
    top_p: float = 0.95
    header: dict[str, str] = field(default_factory=dict)

    @property
    def template(self) -> str:
        return ollama_template(self.chat_format)

    def parameters(self) -> dict[str, Any]:
        """Return the PARAMETER values in the form Ollama's API takes them (stop as a list)."""
        return {
            "num_ctx": self.num_ctx,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "stop": list(self.chat_format.stop),
        }


def render_modelfile(spec: ModelfileSpec, template_path: Optional[Path] = None) -> str:
    """Fill ``modelfiles/<family>.Modelfile`` for ``spec``; a line whose only placeholder is empty is dropped."""
    path = template_path or modelfiles_dir() / f"{spec.chat_format.family}{MODELFILE_SUFFIX}"
    if not path.exists():
        raise ExportError(f"no Modelfile template for family {spec.chat_format.family!r} at {path}")
    if spec.system and not spec.chat_format.has_system_role:
        raise ExportError(
            f"the {spec.chat_format.family} chat format has no system role, so the Modelfile gets no SYSTEM line; "
            "drop --system (a system message sent by a client is still folded into the first user turn)"
        )
    values = {
        "from": quote_value(str(spec.model_path)),
        "adapter": f"ADAPTER {quote_value(str(spec.adapter_path))}" if spec.adapter_path else "",
        "template": spec.template,
        "system": f'SYSTEM """{spec.system}"""' if spec.system else "",
        "stop": "\n".join(f"PARAMETER stop {quote_value(stop)}" for stop in spec.chat_format.stop),
        "num_ctx": str(spec.num_ctx),
        "temperature": _number(spec.temperature),
        "top_k": str(spec.top_k),
        "top_p": _number(spec.top_p),
        **{key: " ".join(str(value).split()) for key, value in spec.header.items()},
    }
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        names = [name for _, name, _, _ in string.Formatter().parse(line) if name is not None]
        unknown = [name for name in names if name not in values]
        if unknown:
            raise ExportError(f"{path}: unknown placeholder(s) {', '.join(unknown)}")
        rendered = line.format_map(values)
        if names and not rendered.strip() and line.strip() == "{" + names[0] + "}":
            continue
        lines.append(rendered)
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass
class ParsedModelfile:
    """The commands of a Modelfile, read the way Ollama's parser reads them."""

    model: Optional[str] = None
    adapter: Optional[str] = None
    template: Optional[str] = None
    system: Optional[str] = None
    parameters: dict[str, list[str]] = field(default_factory=dict)


_COMMANDS = {"from", "adapter", "template", "system", "parameter", "license", "message", "requires", "draft",
             "renderer", "parser"}


def parse_modelfile(text: str) -> ParsedModelfile:
    """Parse a Modelfile with Ollama's rules (parser/parser.go): ``#`` comments, one command per line,
    values optionally in ``"..."`` or in ``\"\"\"...\"\"\"`` spanning lines."""
    parsed = ParsedModelfile()
    position = 0
    while position < len(text):
        line_end = text.find("\n", position)
        line_end = len(text) if line_end == -1 else line_end
        line = text[position:line_end]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            position = line_end + 1
            continue
        command, _, rest = stripped.partition(" ")
        if command.lower() not in _COMMANDS:
            raise ExportError(f"invalid Modelfile command {command!r}")
        value_start = position + line.index(command) + len(command)
        value, position = _read_value(text, value_start)
        _store(parsed, command.lower(), value)
    if parsed.model is None:
        raise ExportError("the Modelfile has no FROM line")
    return parsed


def _read_value(text: str, start: int) -> tuple[str, int]:
    """Read a command's value from ``start``; return it unquoted and the position after its line."""
    while start < len(text) and text[start] in " \t":
        start += 1
    if text.startswith('"""', start):
        end = text.find('"""', start + 3)
        if end == -1:
            raise ExportError('unterminated """ value in the Modelfile')
        line_end = text.find("\n", end)
        return text[start + 3:end], len(text) if line_end == -1 else line_end + 1
    line_end = text.find("\n", start)
    line_end = len(text) if line_end == -1 else line_end
    value = text[start:line_end].strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise ExportError(f"unterminated quoted value {value!r} in the Modelfile")
        value = value[1:-1]
    return value, line_end + 1


def _store(parsed: ParsedModelfile, command: str, value: str) -> None:
    if command == "from":
        parsed.model = value
    elif command == "adapter":
        parsed.adapter = value
    elif command == "template":
        parsed.template = value
    elif command == "system":
        parsed.system = value
    elif command == "parameter":
        name, _, argument = value.partition(" ")
        argument = argument.strip()
        if argument.startswith('"') and argument.endswith('"') and len(argument) >= 2:
            argument = argument[1:-1]
        parsed.parameters.setdefault(name, []).append(argument)


def supported_families() -> list[str]:
    return list(CHAT_FORMATS)
