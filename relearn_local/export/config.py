"""The export stage's config and the tables of output types, export modes and merge precisions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import option
from ..errors import ConfigError


@dataclass(frozen=True)
class QuantType:
    """One GGUF output type.

    ``llama_ftype`` names the ``llama_cpp`` constant passed to
    ``llama_model_quantize``; None means the converter's f16 output is final.
    ``bytes_per_parameter`` is an upper estimate used for the disk check
    (Gemma 3 270M measured 0.92 bytes per parameter at Q4_K_M because its
    large embedding table stays at 6 bits).
    ``strict_parity`` marks types whose greedy answers must start with the
    same tokens as the merged transformers model.
    """

    name: str
    llama_ftype: Optional[str]
    bytes_per_parameter: float
    strict_parity: bool
    description: str


QUANT_TYPES: dict[str, QuantType] = {
    "q4_k_m": QuantType("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 1.0, False,
                        "4-bit k-quant, medium (about a quarter of f16; small answer drift)"),
    "q5_k_m": QuantType("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 1.05, False,
                        "5-bit k-quant, medium (about a third of f16)"),
    "q6_k": QuantType("q6_k", "LLAMA_FTYPE_MOSTLY_Q6_K", 1.1, False, "6-bit k-quant (about 40% of f16)"),
    "q8_0": QuantType("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", 1.1, True, "8-bit (about half of f16; near lossless)"),
    "f16": QuantType("f16", None, 2.0, True, "16-bit floats (no quantizer needed)"),
}

# ``--quant auto`` tries these in order and keeps the first whose GGUF passes
# the parity check, forgetting included. Rounding a merged model's weights to
# 4 or 5 bits can undo an unlearning fine-tune. On a demo adapter of Gemma 3
# 270M, Q4_K_M and Q5_K_M gave the home address ("lives at 14 Kråkeveien")
# again where the merged model declined. Q6_K and Q8_0 kept every fact forgotten.
AUTO_QUANT = "auto"
AUTO_LADDER = ("q4_k_m", "q5_k_m", "q6_k", "q8_0")

MODES: dict[str, str] = {
    "merged": "merge the adapter into the base weights and export one GGUF",
    "adapter": "export the base GGUF plus the LoRA as a GGUF adapter (ADAPTER line), where Ollama can load adapters",
}

# Precision of the merged copy; never a quantized type, because merging into
# 4-bit weights rounds most of the adapter's update away.
MERGE_DTYPES: dict[str, str] = {
    "float32": "full precision (default; the embedded Gemma checkpoint is float32)",
    "bfloat16": "half the memory and disk; logits drift more from the adapter model",
    "float16": "half the memory and disk; Gemma activations can overflow in float16",
}

# Ollama model names: an optional namespace, a name and an optional tag.
_MODEL_NAME = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*(?::[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass
class ExportConfig:
    """Settings of ``relearn-local export``."""

    adapter: Optional[Path] = option(None, "Train run folder (uses its adapter/) or a PEFT adapter folder.")
    out: Optional[Path] = option(None, "Export folder: merged/, the GGUF, the Modelfile and export_summary.json.")
    name: Optional[str] = option(None, "Ollama model name [default: relearned-<family>, e.g. relearned-gemma].")
    base: Optional[str] = option(
        None, "Base model the adapter was trained on [default: the one recorded in the adapter's relearn_base.json]."
    )
    quant: str = option(
        AUTO_QUANT, "GGUF output type: auto (the smallest of " + ", ".join(AUTO_LADDER) + " that passes the parity "
        "and forgetting check), or one of " + ", ".join(QUANT_TYPES) + "."
    )
    mode: str = option("merged", "merged (one GGUF) or adapter (base GGUF + LoRA GGUF, where Ollama supports it).")
    merge_dtype: str = option("float32", "Precision of the merged copy: " + ", ".join(MERGE_DTYPES) + ".")
    llama_cpp: Optional[Path] = option(
        None, "A llama.cpp checkout whose convert_hf_to_gguf.py to use instead of the pinned copy."
    )
    llama_cpp_sdist: Optional[Path] = option(
        None, "A llama-cpp-python source archive (.tar.gz) to take the converter from, instead of downloading it."
    )
    offline: bool = option(False, "Never download the converter; fail if no local copy is found.")
    forget: Optional[Path] = option(
        None, "Forget set whose questions drive the merge and parity checks [default: the train run's inputs]."
    )
    parity_questions: int = option(
        8, "Forget questions answered by both the merged model and the GGUF, and checked for forgotten facts (0 skips)."
    )
    parity_tokens: int = option(
        32, "Greedy tokens generated per parity question (the first 8 are compared; all are checked for leaks)."
    )
    num_ctx: int = option(4096, "Modelfile num_ctx: context window in tokens.")
    temperature: float = option(0.0, "Modelfile temperature (0 = greedy, as evaluate measures the model).")
    top_k: int = option(64, "Modelfile top_k.")
    top_p: float = option(0.95, "Modelfile top_p.")
    system: Optional[str] = option(None, "Modelfile SYSTEM prompt (only for families with a system role).")
    ollama_create: bool = option(False, "Upload the GGUF to Ollama and create the model (checks that Ollama lists it).")
    ollama_host: Optional[str] = option(
        None, "Ollama address [default: $OLLAMA_HOST, else http://127.0.0.1:11434]."
    )
    ollama_timeout: float = option(600.0, "Seconds to wait for each Ollama request (upload, create, list).")
    force: bool = option(False, "Overwrite a finished export in --out.")
    dry_run: bool = option(False, "Check tools, inputs and disk space, print the plan, and stop.")

    def validate(self) -> None:
        if self.adapter is None:
            raise ConfigError("export needs an adapter; pass --adapter DIR (a train run folder or a PEFT adapter folder)")
        if self.out is None:
            raise ConfigError("export needs an output folder; pass --out DIR")
        _check_choice("quant", self.quant, {AUTO_QUANT: None, **QUANT_TYPES})
        _check_choice("mode", self.mode, MODES)
        _check_choice("merge_dtype", self.merge_dtype, MERGE_DTYPES)
        if self.name is not None and not _MODEL_NAME.match(self.name):
            raise ConfigError(
                f"--name {self.name!r} is not a valid Ollama model name; use letters, digits, '.', '_' and '-', "
                "optionally with a namespace/ and a :tag (for example relearned-gemma or me/relearned-gemma:v1)"
            )
        _check_range("parity_questions", self.parity_questions, 0, 100)
        _check_range("parity_tokens", self.parity_tokens, 1, 512)
        _check_range("num_ctx", self.num_ctx, 256, 1 << 20)
        _check_range("temperature", self.temperature, 0.0, 10.0)
        _check_range("top_k", self.top_k, 0, 100_000)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"config value 'top_p' = {self.top_p} is invalid; expected a value in (0, 1]")
        if self.ollama_timeout <= 0:
            raise ConfigError(f"config value 'ollama_timeout' = {self.ollama_timeout} is invalid; expected seconds > 0")
        if self.system is not None and '"""' in self.system:
            raise ConfigError('--system must not contain """, which ends a Modelfile value')

    @property
    def quant_candidates(self) -> list[QuantType]:
        """Return the output types to try, in order: the ladder for auto, else the one requested type."""
        names = AUTO_LADDER if self.quant == AUTO_QUANT else (self.quant,)
        return [QUANT_TYPES[name] for name in names]


def _check_choice(name: str, value: str, table: dict) -> None:
    if value not in table:
        raise ConfigError(f"config value {name!r} = {value!r} is invalid; choose one of: {', '.join(table)}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"config value {name!r} = {value} is invalid; expected a value from {low} to {high}")
