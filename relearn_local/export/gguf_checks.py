"""Serving metadata the exported GGUF needs so a server tokenizes and stops like training: checks and fixes.

Expectations come from the model's transformers tokenizer and generation
config and from the family's chat format:

- turn markers, BOS and EOS are control tokens, so servers parse them as
  single special tokens and do not print them;
- ``tokenizer.ggml.eos_token_id`` is one of the generation EOS ids and
  ``tokenizer.ggml.eot_token_id`` is the end-of-turn token (Gemma 3:
  ``<end_of_turn>`` = 106); a newline token (Gemma 3: id 107) is neither;
- ``tokenizer.ggml.add_bos_token`` is true exactly when training put a BOS
  first, because Ollama and llama.cpp prepend BOS when it is set;
- ``tokenizer.chat_template`` renders the family's format;
- the vocabulary has one entry per embedding row.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..chat_formats import ChatFormat
from ..errors import ExportError
from .gguf_metadata import TOKEN_CONTROL, GgufReport, edit_gguf_metadata, read_gguf_report

logger = logging.getLogger(__name__)


@dataclass
class ServingExpectations:
    """Token facts of the trained model that the GGUF has to reproduce."""

    family: str
    tokenizer_size: int
    add_bos: bool
    bos_id: Optional[int]
    generation_eos_ids: list[int]
    end_of_turn_id: Optional[int]
    control_ids: dict[int, str]
    newline_ids: list[int]
    chat_template: str

    def token_ids(self) -> set[int]:
        ids = set(self.control_ids) | set(self.generation_eos_ids) | set(self.newline_ids)
        if self.bos_id is not None:
            ids.add(self.bos_id)
        return ids

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.pop("chat_template")
        values["control_ids"] = {str(key): value for key, value in self.control_ids.items()}
        return values


def serving_expectations(tokenizer: Any, chat_format: ChatFormat, generation_eos: Any) -> ServingExpectations:
    """Derive the expectations from a transformers tokenizer and the generation config's ``eos_token_id``."""
    special_ids = set(tokenizer.all_special_ids)
    for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            special_ids.add(int(token_id))

    # Special tokens inside the chat markers: turn starts and ends, role headers.
    control: dict[int, str] = {}
    markers = {chat_format.system_start, chat_format.user_start, chat_format.assistant_start,
               chat_format.turn_end, *chat_format.stop}
    for marker in filter(None, markers):
        for token_id in tokenizer(marker, add_special_tokens=False)["input_ids"]:
            if token_id in special_ids:
                control[token_id] = tokenizer.convert_ids_to_tokens(token_id)

    end_ids = tokenizer(chat_format.turn_end, add_special_tokens=False)["input_ids"]
    end_of_turn = end_ids[0] if len(end_ids) == 1 and end_ids[0] in special_ids else None
    eos_ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    for token_id in (tokenizer.eos_token_id, end_of_turn):
        if token_id is not None and token_id not in eos_ids:
            eos_ids.append(token_id)
    bos_id = tokenizer.bos_token_id if chat_format.bos is not None else None
    for token_id in [*eos_ids, bos_id]:
        if token_id is not None:
            control[token_id] = tokenizer.convert_ids_to_tokens(token_id)

    newline_ids = [token_id for token_id in tokenizer("\n", add_special_tokens=False)["input_ids"]
                   if token_id not in special_ids]
    return ServingExpectations(
        family=chat_format.family, tokenizer_size=len(tokenizer), add_bos=chat_format.bos is not None, bos_id=bos_id,
        generation_eos_ids=sorted(int(token_id) for token_id in eos_ids), end_of_turn_id=end_of_turn,
        control_ids=dict(sorted(control.items())), newline_ids=newline_ids,
        chat_template=chat_format.jinja_template(),
    )


def metadata_fixes(report: GgufReport, expected: ServingExpectations) -> tuple[dict[str, tuple[Any, Any]], dict[int, int]]:
    """Return the key values and token types to change so the GGUF meets ``expected``."""
    from gguf import GGUFValueType, Keys

    values: dict[str, tuple[Any, Any]] = {}
    if report.chat_template != expected.chat_template:
        values[Keys.Tokenizer.CHAT_TEMPLATE] = (GGUFValueType.STRING, expected.chat_template)
    if report.add_bos != expected.add_bos:
        values[Keys.Tokenizer.ADD_BOS] = (GGUFValueType.BOOL, expected.add_bos)
    if expected.end_of_turn_id is not None and report.eot_id != expected.end_of_turn_id:
        values[Keys.Tokenizer.EOT_ID] = (GGUFValueType.UINT32, expected.end_of_turn_id)
    if report.eos_id not in expected.generation_eos_ids and expected.generation_eos_ids:
        values[Keys.Tokenizer.EOS_ID] = (GGUFValueType.UINT32, expected.generation_eos_ids[0])
    token_types = {token_id: TOKEN_CONTROL for token_id in expected.control_ids
                   if report.token_types.get(token_id) != TOKEN_CONTROL}
    return values, token_types


def check_gguf(report: GgufReport, expected: ServingExpectations) -> list[str]:
    """Return every way the GGUF differs from ``expected`` (empty when it is fit to serve)."""
    problems = []
    if report.token_count < expected.tokenizer_size:
        problems.append(f"the vocabulary has {report.token_count} tokens, fewer than the tokenizer's "
                        f"{expected.tokenizer_size}")
    if report.embedding_rows is None:
        problems.append("the GGUF has no token_embd.weight tensor")
    elif report.embedding_rows != report.token_count:
        problems.append(f"the vocabulary has {report.token_count} tokens but the embedding {report.embedding_rows} rows")
    for token_id, text in expected.control_ids.items():
        if report.token_types.get(token_id) != TOKEN_CONTROL:
            problems.append(f"token {token_id} {text!r} is type {report.token_types.get(token_id)}, not control (3)")
    if report.eos_id not in expected.generation_eos_ids:
        problems.append(f"EOS id {report.eos_id} is not a generation EOS id {expected.generation_eos_ids}")
    if expected.end_of_turn_id is not None and report.eot_id != expected.end_of_turn_id:
        problems.append(f"EOT id {report.eot_id} is not the end-of-turn token {expected.end_of_turn_id}")
    for token_id in (report.eos_id, report.eot_id):
        if token_id is not None and token_id in expected.newline_ids:
            problems.append(f"stop token {token_id} is a newline")
    if report.add_bos != expected.add_bos:
        problems.append(f"add_bos_token is {report.add_bos}, training used {expected.add_bos}")
    if expected.bos_id is not None and report.bos_id != expected.bos_id:
        problems.append(f"BOS id {report.bos_id} is not the tokenizer's {expected.bos_id}")
    if report.chat_template != expected.chat_template:
        problems.append("tokenizer.chat_template is missing or differs from the family's chat format")
    return problems


@dataclass
class FinalizeResult:
    report: GgufReport
    changed_keys: list[str] = field(default_factory=list)
    changed_token_types: int = 0


def finalize_gguf(source: Path, target: Path, expected: ServingExpectations) -> FinalizeResult:
    """Write ``target`` with the serving metadata fixed, read it back and raise ExportError if anything is still off."""
    report = read_gguf_report(source, expected.token_ids())
    values, token_types = metadata_fixes(report, expected)
    if values or token_types:
        logger.info("setting %s and %d token types in %s", ", ".join(values) or "no keys", len(token_types), target.name)
        edit_gguf_metadata(source, target, values, token_types)
        if source != target:
            source.unlink()
    elif source != target:
        source.replace(target)
    final = read_gguf_report(target, expected.token_ids())
    problems = check_gguf(final, expected)
    if problems:
        raise ExportError(f"{target} is not fit to serve: " + "; ".join(problems))
    return FinalizeResult(final, sorted(values), len(token_types))
