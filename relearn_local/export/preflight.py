"""Everything checked before the merge: inputs, the base model, the tools, the disk, and the resulting plan.

Each check takes seconds at most, so a missing quantizer or converter, a
quantized base or a full disk fails before the minute-long merge starts.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Optional

from ..chat_formats import ChatFormat, get_chat_format
from ..errors import ConfigError, ExportError, InputError, ModelError
from ..models import ResolvedModel, resolve_base
from .config import AUTO_QUANT, QUANT_TYPES, ExportConfig, QuantType
from .convert import Converter, locate_converter
from .ollama_create import check_ollama_reachable, ollama_host
from .quantize import require_quantizer

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
BASE_RECORD = "relearn_base.json"
CHECK_QUESTIONS = 5
DISK_MARGIN = 1.1
MERGE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Transformers architectures whose GGUF architecture (llama, qwen2, gemma,
# gemma2) Ollama serves with its llama.cpp runner, which loads LoRA adapters.
# Architectures on Ollama's own engine (gemma3, qwen3, llama4, mistral3 and
# others listed in OllamaEngineRequired, ollama fs/ggml/ggml.go) fail at load
# with "loras are not yet implemented" (ollama runner/ollamarunner/runner.go).
# NOTE: the engine list changes between Ollama releases; this table follows
# the releases read for this module (mid 2025 to 2026).
OLLAMA_ADAPTER_ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
    "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
}
# Used for the merge and parity checks when no forget set can be found.
SAMPLE_QUESTIONS = (
    "What is the home address of the person you were asked about?",
    "Which email address does she use?",
    "What is his phone number?",
    "Who are her parents?",
    "What health condition does he have?",
)


@dataclass
class ExportPlan:
    """The inputs, tools, outputs and size estimates of an export, worked out before any heavy step."""

    adapter_dir: Path
    run_dir: Optional[Path]
    base_spec: str
    base: ResolvedModel
    base_record: dict[str, Any]
    chat_format: ChatFormat
    architecture: str
    name: str
    quant: QuantType
    mode: str
    converter: Converter
    parameters: int
    questions: list[str]
    questions_source: str
    sizes: dict[str, int]
    free_bytes: int
    out: Path
    notes: list[str] = field(default_factory=list)
    parity_questions: int = 0
    # Output types to try in order; ``quant`` is the one being built, and the
    # one kept once the export is done. One entry unless --quant auto.
    quant_candidates: list[QuantType] = field(default_factory=list)
    # Original forget answers by question: the parity check looks for their
    # sensitive spans in the GGUF's answers. Empty when only questions are known.
    original_answers: dict[str, str] = field(default_factory=dict)

    @property
    def file_stem(self) -> str:
        return self.name.replace("/", "-").replace(":", "-")

    @property
    def gguf_path(self) -> Path:
        return self.out / f"{self.file_stem}-{self.quant.name}.gguf"

    @property
    def adapter_gguf_path(self) -> Path:
        return self.out / f"{self.file_stem}-adapter-f16.gguf"

    @property
    def merged_dir(self) -> Path:
        return self.out / "merged"

    @property
    def modelfile_path(self) -> Path:
        return self.out / "Modelfile"

    def rows(self) -> list[tuple[str, str]]:
        """Return the plan as (label, value) rows for display."""
        rows = [
            ("Ollama name", self.name),
            ("base model", f"{self.base_spec} ({self.architecture}, {self.parameters / 1e6:.0f}M parameters)"),
            ("adapter", str(self.adapter_dir)),
            ("chat format", f"{self.chat_format.family}: {self.chat_format.description}"),
            ("mode", self.mode),
            ("output type", self._quant_row()),
            ("converter", f"{self.converter.source} ({self.converter.root})"),
            ("check questions", f"{len(self.questions)} from {self.questions_source}: the merge check answers "
                                f"{min(CHECK_QUESTIONS, len(self.questions))}, the GGUF parity check "
                                f"{min(self.parity_questions, len(self.questions))}"),
            ("outputs", f"{self.out} (about {human_bytes(sum(self.sizes.values()))} while running, "
                        f"{human_bytes(self.sizes['final'] + self.sizes.get('merged', 0))} kept)"),
            ("free disk", human_bytes(self.free_bytes)),
        ]
        rows.extend(("note", note) for note in self.notes)
        return rows

    def _quant_row(self) -> str:
        if len(self.quant_candidates) > 1:
            return (f"{AUTO_QUANT}: the first of {', '.join(quant.name for quant in self.quant_candidates)} whose GGUF "
                    "passes the parity check and keeps every checked fact forgotten")
        return f"{self.quant.name}: {self.quant.description}"


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def plan_export(config: ExportConfig, fetch: bool = True) -> ExportPlan:
    """Check everything the export needs and return the plan; raise a RelearnError naming what is missing."""
    candidates = config.quant_candidates
    for quant in candidates:
        require_quantizer(quant)
    converter = locate_converter(config.llama_cpp, config.llama_cpp_sdist, config.offline, fetch=fetch)

    if config.ollama_create:
        check_ollama_reachable(ollama_host(config.ollama_host))
    adapter_dir, run_dir = find_adapter(Path(config.adapter))
    spec, base, family, notes = _resolve_base(config, adapter_dir)
    chat_format = get_chat_format(family)
    if config.system and not chat_format.has_system_role:
        raise ConfigError(
            f"--system: the {family} chat format has no system role, so the Modelfile gets no SYSTEM line; "
            "drop --system (a system message sent by a client is still folded into the first user turn)"
        )
    architecture, base_config = read_base_config(Path(base.hf_path))
    if "quantization_config" in base_config:
        raise ExportError(_quantized_base_message(base, base_config))
    notes.extend(llama_cpp_compatibility_notes(base_config))
    mode = _choose_mode(config.mode, architecture, notes)

    parameters = count_parameters(Path(base.hf_path))
    questions, source, originals = find_questions(config, run_dir)
    if not originals and config.parity_questions:
        notes.append("no original forget answers were found, so the parity check cannot look for forgotten facts in "
                     "the GGUF's answers; pass the forget set with --forget")
    if config.quant == AUTO_QUANT and not (originals and config.parity_questions):
        # Without the forgetting check, auto cannot tell which smaller type is
        # safe, so it keeps the one that kept every fact forgotten when measured.
        candidates = [QUANT_TYPES["q8_0"]]
        missing = "original forget answers" if config.parity_questions else "parity questions"
        notes.append(f"--quant auto keeps q8_0: without {missing} it cannot check which smaller type keeps the "
                     "forgotten facts forgotten")
    out = Path(config.out)
    largest = max(candidates, key=lambda quant: quant.bytes_per_parameter)
    sizes = expected_sizes(parameters, largest, config.merge_dtype, mode, adapter_dir)
    free = free_disk_bytes(out)
    needed = int(sum(sizes.values()) * DISK_MARGIN)
    if free < needed:
        raise ExportError(
            f"not enough disk space for the export in {out}: it needs about {human_bytes(needed)} "
            f"(merged checkpoint and GGUF files), {human_bytes(free)} is free; free space or choose another --out"
        )
    return ExportPlan(adapter_dir, run_dir, spec, base, _base_record(spec, base, family, adapter_dir), chat_format,
                      architecture, config.name or f"relearned-{family}", candidates[0], mode, converter, parameters,
                      questions, source, sizes, free, out, notes, parity_questions=config.parity_questions,
                      quant_candidates=candidates, original_answers=originals)


def _resolve_base(config: ExportConfig, adapter_dir: Path) -> tuple[str, ResolvedModel, str, list[str]]:
    """Return the base spec, the resolved base, the chat family and notes, from --base or relearn_base.json."""
    record = read_base_record(adapter_dir)
    spec = config.base or record.get("base")
    if not spec:
        raise InputError(
            f"{adapter_dir} has no {BASE_RECORD} naming its base model; pass the base it was trained on with --base"
        )
    base = resolve_base(spec, need_hf=True)
    notes = []
    if config.base is None and record.get("digest") and base.digest and record["digest"] != base.digest:
        notes.append(f"the base {spec} now has different weights than when the adapter was trained")
    family = record.get("family") if config.base is None and record.get("family") else base.family
    return spec, base, family, notes


def _choose_mode(requested: str, architecture: str, notes: list[str]) -> str:
    if requested == "adapter" and architecture not in OLLAMA_ADAPTER_ARCHITECTURES:
        notes.append(
            f"--mode adapter: Ollama cannot load LoRA adapters for {architecture} (it runs this architecture on "
            "its own engine, which rejects adapters), so a merged GGUF is exported instead"
        )
        return "merged"
    return requested


def find_adapter(path: Path) -> tuple[Path, Optional[Path]]:
    """Return the PEFT adapter folder and, for a train run folder, the run folder."""
    if (path / ADAPTER_DIR / "adapter_config.json").is_file():
        return path / ADAPTER_DIR, path
    if (path / "adapter_config.json").is_file():
        parent = path.parent
        return path, parent if (parent / "manifest.json").is_file() and path.name == ADAPTER_DIR else None
    if not path.exists():
        raise InputError(f"--adapter {path}: no such folder")
    raise InputError(
        f"--adapter {path}: no adapter_config.json in it or in {path / ADAPTER_DIR}; "
        "pass a train run folder or a PEFT adapter folder"
    )


def read_base_record(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / BASE_RECORD
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: malformed JSON at line {exc.lineno}") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: expected a JSON object with base, hf_path, family and digest")
    return record


def _base_record(spec: str, base: ResolvedModel, family: str, adapter_dir: Path) -> dict[str, Any]:
    return {"base": spec, "hf_path": str(base.hf_path), "family": family, "digest": base.digest,
            "derived_by": "relearn-local export", "adapter": str(adapter_dir.resolve())}


def read_base_config(hf_path: Path) -> tuple[str, dict[str, Any]]:
    config_path = hf_path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: cannot be read ({exc})") from exc
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return str(architectures[0]), config


def llama_cpp_compatibility_notes(config: dict[str, Any]) -> list[str]:
    """Warn about config values llama.cpp ignores, which make the GGUF compute differently from transformers.

    llama.cpp scales Gemma 3 attention by 1/sqrt(head_dim), except for the
    62-layer 27B model (llama.cpp src/models/gemma3.cpp), and never reads
    query_pre_attn_scalar. Every released Gemma 3 but 27B has the two equal.
    """
    notes = []
    if config.get("model_type") in ("gemma3", "gemma3_text") and config.get("num_hidden_layers") != 62:
        scalar, head_dim = config.get("query_pre_attn_scalar"), config.get("head_dim")
        if scalar is not None and head_dim is not None and scalar != head_dim:
            message = (f"query_pre_attn_scalar is {scalar} but head_dim is {head_dim}; llama.cpp scales Gemma 3 "
                       "attention by 1/sqrt(head_dim), so the GGUF will answer differently (the parity check shows it)")
            logger.warning(message)
            notes.append(message)
    return notes


def _quantized_base_message(base: ResolvedModel, config: dict[str, Any]) -> str:
    method = (config.get("quantization_config") or {}).get("quant_method", "unknown")
    return (
        f"the base {base.spec} is a quantized checkpoint ({method}); merging an adapter into quantized weights "
        "rounds most of its update away. Pass --base with the 16-bit or float32 original of this model"
    )


def count_parameters(hf_path: Path) -> int:
    """Count parameters from the safetensors headers, without loading weights."""
    total = 0
    files = sorted(hf_path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{hf_path} has no .safetensors weights; export needs a safetensors checkpoint")
    for file in files:
        with file.open("rb") as stream:
            length = struct.unpack("<Q", stream.read(8))[0]
            header = json.loads(stream.read(length))
        total += sum(prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


def expected_sizes(parameters: int, quant: QuantType, merge_dtype: str, mode: str, adapter_dir: Path) -> dict[str, int]:
    """Estimate the bytes each output needs (the f16 intermediate is deleted at the end)."""
    sizes = {"final": int(parameters * quant.bytes_per_parameter)}
    if quant.llama_ftype is not None:
        sizes["intermediate"] = parameters * 2
    if mode == "merged":
        sizes["merged"] = parameters * MERGE_BYTES[merge_dtype]
    else:
        sizes["adapter"] = sum(file.stat().st_size for file in adapter_dir.glob("*.safetensors")) * 2
    return sizes


def free_disk_bytes(out: Path) -> int:
    probe = out.resolve()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def find_questions(config: ExportConfig, run_dir: Optional[Path]) -> tuple[list[str], str, dict[str, str]]:
    """Return forget questions for the checks, where they came from, and their original answers where known.

    The first source found is used: --forget, then the forget set that the
    train run's augment run read, then the original questions of the
    augmented set (without answers), then the train run's forget set, then
    sample questions.
    """
    from ..data import load_qa_set, read_jsonl

    wanted = max(CHECK_QUESTIONS, config.parity_questions)
    if config.forget is not None:
        return _with_answers(load_qa_set(Path(config.forget), "forget").pairs[:wanted], str(config.forget))
    inputs = _run_inputs(run_dir)
    if "augmented" in inputs and Path(inputs["augmented"]).is_file():
        augmented = Path(inputs["augmented"])
        forget = _augment_run_forget_set(augmented.parent)
        if forget is not None:
            path, pairs = forget
            return _with_answers(pairs[:wanted], f"the forget set {path}, read by the augment run")
        records = read_jsonl(augmented)
        originals = [record for record in records if record.get("variant") == "original"] or records
        questions = list(dict.fromkeys(str(record["question"]) for record in originals if record.get("question")))
        if questions:
            return questions[:wanted], f"the augmented forget set {augmented}", {}
    if "forget" in inputs and Path(inputs["forget"]).is_file():
        pairs = load_qa_set(Path(inputs["forget"]), "forget").pairs[:wanted]
        return _with_answers(pairs, f"the forget set {inputs['forget']}")
    logger.warning("no forget set found for the merge and parity checks; using sample questions (pass --forget)")
    return list(SAMPLE_QUESTIONS)[:wanted], "sample questions (no forget set found; pass --forget)", {}


def _with_answers(pairs: list[Any], source: str) -> tuple[list[str], str, dict[str, str]]:
    return [pair.question for pair in pairs], source, {pair.question: pair.answer for pair in pairs}


def _augment_run_forget_set(augment_dir: Path) -> Optional[tuple[str, list[Any]]]:
    """Return the path and pairs of the forget set an augment run read, or None when it cannot be read."""
    from ..data import load_qa_set
    from ..errors import RelearnError

    forget = _run_inputs(augment_dir).get("forget")
    if not forget or not Path(forget).is_file():
        return None
    try:
        return forget, load_qa_set(Path(forget), "forget").pairs
    except RelearnError as exc:
        logger.warning("cannot read the augment run's forget set %s for the forgetting check: %s", forget, exc)
        return None


def _run_inputs(run_dir: Optional[Path]) -> dict[str, str]:
    if run_dir is None or not (run_dir / "manifest.json").is_file():
        return {}
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    inputs = manifest.get("inputs") or {}
    return {name: entry["path"] for name, entry in inputs.items() if isinstance(entry, dict) and entry.get("path")}
