"""Typed stage configs with the precedence default < config file < flag.

Each stage declares a dataclass whose fields carry ``help`` (and ``paper``
when the default comes from the ReLearn paper) in their metadata. A config
file is YAML; it may hold the fields flat or in a section named after the
stage (``train:``), so one file can configure ``relearn-local run``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

C = TypeVar("C")


def option(default: Any, help: str, paper: bool = False, **kwargs: Any) -> Any:
    """Declare a config field with its help text; ``paper`` marks a default taken from the ReLearn paper."""
    metadata = {"help": help, "paper": paper}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def field_help(cls: type, name: str) -> str:
    """Return the help text of a field, with '(ReLearn paper)' where its default comes from the paper."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            text = item.metadata.get("help", "")
            return f"{text} (ReLearn paper default)" if item.metadata.get("paper") else text
    raise KeyError(name)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(arguments) == 1:
            return arguments[0], True
    return annotation, False


def _coerce(cls: type, name: str, annotation: Any, value: Any) -> Any:
    target, optional = _strip_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config value {name!r} must not be empty")
    origin = typing.get_origin(target)
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "yes", "1", "on", "false", "no", "0", "off"}:
                return value.lower() in {"true", "yes", "1", "on"}
            raise ValueError(value)
        if target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if target is str:
            return str(value)
        if target is Path:
            return Path(value).expanduser()
        if origin in (list, tuple):
            (item_type, *_) = typing.get_args(target) or (Any,)
            items = value if isinstance(value, (list, tuple)) else [value]
            coerced = [_coerce(cls, name, item_type, item) if item_type is not Any else item for item in items]
            return coerced if origin is list else tuple(coerced)
        if origin is typing.Literal:
            allowed = typing.get_args(target)
            if value not in allowed:
                raise ConfigError(
                    f"config value {name!r} = {value!r} is invalid; choose one of: {', '.join(map(str, allowed))}"
                )
            return value
    except (TypeError, ValueError):
        raise ConfigError(
            f"config value {name!r} = {value!r} is invalid; expected {getattr(target, '__name__', target)}"
        ) from None
    return value


def build_config(cls: type[C], file: Path | str | None = None, overrides: Mapping[str, Any] | None = None,
                 section: str | None = None) -> C:
    """Build ``cls`` from its defaults, then the YAML ``file``, then ``overrides`` (flags the user gave)."""
    values: dict[str, Any] = {}
    if file is not None:
        values.update(read_config_file(Path(file), cls, section))
    for key, value in (overrides or {}).items():
        values[key] = value
    hints = typing.get_type_hints(cls)
    known = {item.name for item in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)} for {section or cls.__name__}; "
            f"valid keys: {', '.join(sorted(known))}"
        )
    coerced = {key: _coerce(cls, key, hints[key], value) for key, value in values.items()}
    config = cls(**coerced)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def read_config_file(path: Path, cls: type | None = None, section: str | None = None) -> dict[str, Any]:
    """Read a YAML config; return the stage's section when the file has one, else the whole mapping."""
    import yaml

    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values at the top level")
    if section and isinstance(loaded.get(section), dict):
        return dict(loaded[section])
    if cls is not None and section:
        # A file with sections for other stages only has nothing for this one.
        known = {item.name for item in dataclasses.fields(cls)}
        if loaded and all(isinstance(value, dict) for value in loaded.values()) and not set(loaded) & known:
            return {}
    return dict(loaded)


def config_to_dict(config: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return {item.name: plain(getattr(config, item.name)) for item in dataclasses.fields(config)}


def config_to_yaml(config: Any) -> str:
    """Render a config as YAML with each field's help as a comment above it."""
    import yaml

    lines = [f"# Resolved {type(config).__name__}: defaults < config file < flags"]
    for item in dataclasses.fields(config):
        help_text = item.metadata.get("help")
        if help_text:
            suffix = " (ReLearn paper default)" if item.metadata.get("paper") else ""
            lines.append(f"# {help_text}{suffix}")
        dumped = yaml.safe_dump({item.name: config_to_dict(config)[item.name]}, allow_unicode=True, sort_keys=False)
        lines.append(dumped.rstrip("\n"))
    return "\n".join(lines) + "\n"
