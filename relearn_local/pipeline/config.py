"""The ``relearn-local run`` config: run-level options plus optional per-stage sections.

A run config file holds run-level keys at the top and may add sections named
after stages (``inject:``, ``augment:``, ``train:``, ``export:``,
``evaluate:``) whose keys go to that stage's own config. Paths that the
pipeline decides (inputs, outputs, the base model) are set by the pipeline and
cannot be overridden in a section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from ..config import build_config, option, read_config_file
from ..errors import ConfigError
from ..models import EMBEDDED_BASE

STAGE_SECTIONS = ("inject", "augment", "train", "export", "evaluate")

# Keys of each stage config that the pipeline sets itself.
PIPELINE_OWNED_KEYS = {
    "inject": {"data", "out", "base", "force", "resume", "dry_run"},
    "augment": {"forget", "out", "force", "question_field", "answer_field"},
    "train": {"augmented", "forget", "retain", "out", "base", "method", "force", "resume", "dry_run",
              "question_field", "answer_field"},
    "export": {"adapter", "out", "name", "base", "forget", "force", "dry_run", "ollama_create", "ollama_host"},
    "evaluate": {"model", "adapter", "forget", "retain", "answers", "out", "force", "question_field",
                 "answer_field"},
}


@dataclass
class RunConfig:
    """Options of the whole pipeline; stage sections carry everything else."""

    forget: Optional[Path] = option(None, "Forget set: the question/answer pairs the model must forget.")
    retain: Optional[Path] = option(None, "Retain set: the question/answer pairs the model must keep knowing.")
    out: Optional[Path] = option(None, "Run folder; each stage writes into a subfolder of it.")
    base: str = option(EMBEDDED_BASE, "Base model: 'gemma3-270m' (embedded), an HF folder, a GGUF or a hub id.")
    inject: bool = option(
        False,
        "Teach the base the forget and retain facts first, so that forgetting shows on a base that never knew them.",
    )
    name: Optional[str] = option(None, "Ollama model name [default: relearned-<family>, e.g. relearned-gemma].")
    question_field: Optional[str] = option(None, "Record field holding the question (detected when unset).")
    answer_field: Optional[str] = option(None, "Record field holding the answer (detected when unset).")
    forget_limit: Optional[int] = option(None, "Use only the first N forget items (a quick run on a slice).")
    retain_limit: Optional[int] = option(None, "Use only the first N retain items.")
    ollama: Literal["auto", "on", "off"] = option(
        "auto",
        "Use Ollama for augmentation and 'ollama create': auto uses it when it answers at the host.",
    )
    ollama_host: Optional[str] = option(None, "Ollama server [default: $OLLAMA_HOST or 127.0.0.1:11434].")
    evaluate_before: bool = option(True, "Evaluate the model before unlearning, for the before/after report.")
    examples_in_report: int = option(3, "Forget and retain questions shown with both answers in report.md.")
    seed: int = option(0, "Random seed passed to every stage.")
    force: bool = option(False, "Start over in a folder that holds a finished or unfinished run.")

    def validate(self) -> None:
        for name in ("forget_limit", "retain_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.examples_in_report < 0:
            raise ConfigError(f"examples_in_report must be 0 or more, got {self.examples_in_report}")


@dataclass
class ResolvedRunConfig:
    """The run config with the per-stage overrides read from the config file."""

    run: RunConfig
    stages: dict[str, dict[str, Any]]


def load_run_config(file: Path | None, overrides: Mapping[str, Any]) -> ResolvedRunConfig:
    """Build the run config (default < file < flags) and collect the stage sections of ``file``."""
    values: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {name: {} for name in STAGE_SECTIONS}
    if file is not None:
        loaded = read_config_file(Path(file))
        for key, value in loaded.items():
            if key in STAGE_SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{file}: section {key!r} must be a mapping of option names to values")
                owned = sorted(set(value) & PIPELINE_OWNED_KEYS[key])
                if owned:
                    raise ConfigError(
                        f"{file}: {key}.{owned[0]} is set by 'relearn-local run' itself; "
                        "remove it from the section (use the run-level option instead)"
                    )
                stages[key] = dict(value)
            elif key == "run" and isinstance(value, dict):
                values.update(value)
            else:
                values[key] = value
    run = build_config(RunConfig, None, {**values, **dict(overrides)})
    if run.forget is None or run.retain is None:
        raise ConfigError("relearn-local run needs --forget FILE and --retain FILE")
    if run.out is None:
        raise ConfigError("relearn-local run needs --out DIR")
    return ResolvedRunConfig(run=run, stages=stages)


def stage_config(cls: type, section: Mapping[str, Any], owned: Mapping[str, Any]) -> Any:
    """Build a stage config from its section of the run file and the values the pipeline sets."""
    known = {item.name for item in dataclasses.fields(cls)}
    return build_config(cls, None, {**dict(section), **{k: v for k, v in owned.items() if k in known}})
