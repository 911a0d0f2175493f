"""Training backends: choosing unsloth or transformers+peft, the compute dtype, loading the model with LoRA.

Unsloth and bitsandbytes are imported only when chosen, and only on a
machine with a CUDA GPU: Unsloth raises at import time without one.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import BackendError, ConfigError, ModelError

logger = logging.getLogger(__name__)

BACKEND_UNSLOTH = "unsloth"
BACKEND_TRANSFORMERS = "transformers"


@dataclass
class BackendChoice:
    """The backend, device, dtype and quantization a run trains with, and why."""

    backend: str
    device: str
    dtype: str
    quantization: Optional[str]
    reasons: list[str] = field(default_factory=list)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _import_unsloth() -> Any:
    return importlib.import_module("unsloth")


def choose_backend(requested: str, dtype: str, quantization: str, family: str,
                   cuda: Optional[bool] = None,
                   import_unsloth: Callable[[], Any] = _import_unsloth) -> BackendChoice:
    """Resolve --backend, --dtype and --quantization for this machine; raise BackendError or ConfigError on a bad pick."""
    has_cuda = cuda_available() if cuda is None else cuda
    reasons: list[str] = []
    if requested == BACKEND_UNSLOTH and not has_cuda:
        raise BackendError(
            "--backend unsloth needs a CUDA GPU and none was found; use --backend transformers (or auto) on this machine"
        )
    backend = BACKEND_TRANSFORMERS
    if requested in ("auto", BACKEND_UNSLOTH) and has_cuda:
        try:
            import_unsloth()
            backend = BACKEND_UNSLOTH
            reasons.append("unsloth imported on a CUDA GPU")
        except Exception as exc:  # Unsloth raises assorted errors at import (no GPU, driver, versions)
            if requested == BACKEND_UNSLOTH:
                raise BackendError(
                    f"--backend unsloth: importing unsloth failed ({type(exc).__name__}: {exc}); "
                    "fix the installation or use --backend transformers"
                ) from None
            reasons.append(f"unsloth unavailable ({type(exc).__name__}), using transformers+peft")
    elif requested == "auto":
        reasons.append("no CUDA GPU, using transformers+peft on the CPU")
    device = "cuda" if has_cuda else "cpu"
    chosen_dtype = _choose_dtype(dtype, family, has_cuda, reasons)
    chosen_quantization = _choose_quantization(quantization, has_cuda, backend, reasons)
    return BackendChoice(backend, device, chosen_dtype, chosen_quantization, reasons)


def _choose_dtype(requested: str, family: str, has_cuda: bool, reasons: list[str]) -> str:
    if requested == "float16":
        if family == "gemma":
            raise ConfigError(
                "--dtype float16 is rejected for Gemma models: their activations overflow float16 and the loss "
                "turns NaN; use --dtype bfloat16 (GPU) or float32"
            )
        if not has_cuda:
            raise ConfigError("--dtype float16 needs a CUDA GPU; use float32 (or bfloat16) on the CPU")
        return "float16"
    if requested == "bfloat16":
        if not has_cuda and not cpu_has_native_bfloat16():
            logger.warning(
                "this CPU has no native bfloat16 instructions, so bfloat16 matrix products are emulated and "
                "far slower than float32; prefer --dtype float32"
            )
        return "bfloat16"
    if requested == "float32":
        return "float32"
    if has_cuda:
        import torch

        if torch.cuda.is_bf16_supported():
            reasons.append("bfloat16 on a GPU that supports it")
            return "bfloat16"
        if family == "gemma":
            reasons.append("float32: this GPU lacks bfloat16 and float16 overflows in Gemma")
            return "float32"
        return "float16"
    reasons.append("float32 on the CPU")
    return "float32"


def cpu_has_native_bfloat16() -> bool:
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def _choose_quantization(requested: str, has_cuda: bool, backend: str, reasons: list[str]) -> Optional[str]:
    if requested == "none":
        return None
    if not has_cuda:
        if requested == "4bit":
            raise ConfigError("--quantization 4bit needs a CUDA GPU (bitsandbytes); use --quantization none on the CPU")
        return None
    if backend == BACKEND_TRANSFORMERS:
        reasons.append("4-bit NF4 base weights through bitsandbytes")
    else:
        reasons.append("4-bit base weights through unsloth")
    return "4bit"


def lora_target_modules(model: Any) -> tuple[list[str], Optional[str]]:
    """Pick every linear layer of the text decoder, leaving out the output head, embeddings and any vision tower.

    Returns the distinct layer names and, when the same names also occur
    outside the decoder (multimodal checkpoints), a regular expression that
    restricts LoRA to the decoder's modules.
    """
    import torch

    decoder = model.get_decoder()
    decoder_prefix = next(name for name, module in model.named_modules() if module is decoder)
    head = model.get_output_embeddings()
    inside: set[str] = set()
    outside: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith(decoder_prefix + "."):
            inside.add(leaf)
        else:
            outside.add(leaf)
    if not inside:
        raise ModelError(f"found no linear layers in the decoder of {type(model).__name__}; LoRA has nothing to adapt")
    names = sorted(inside)
    if inside & outside:
        pattern = rf"^{re.escape(decoder_prefix)}\..*\.({'|'.join(map(re.escape, names))})$"
        return names, pattern
    return names, None


def lora_parameter_count(model: Any, rank: int) -> int:
    """Count LoRA parameters for ``rank`` over the layers lora_target_modules picks (no weights needed)."""
    import torch

    names, pattern = lora_target_modules(model)
    decoder = model.get_decoder()
    decoder_prefix = next(name for name, module in model.named_modules() if module is decoder)
    head = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if not name.startswith(decoder_prefix + ".") or name.rsplit(".", 1)[-1] not in names:
            continue
        if pattern is not None and not re.match(pattern, name):
            continue
        total += rank * (module.in_features + module.out_features)
    return total


def describe_architecture(hf_path: Path, rank: int) -> dict[str, Any]:
    """Build the model on the meta device (no weights read) and count its parameters and LoRA parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(hf_path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names, pattern = lora_target_modules(model)
    return {
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trainable_parameters": lora_parameter_count(model, rank),
        "target_modules": names,
        "target_pattern": pattern,
        "model_type": config.model_type,
        "class": type(model).__name__,
    }


@dataclass
class LoadedModel:
    """A model with a fresh LoRA adapter, ready to train."""

    model: Any
    tokenizer: Any
    choice: BackendChoice
    target_modules: list[str]
    target_pattern: Optional[str]


@dataclass
class LoraSettings:
    rank: int
    alpha: float
    dropout: float
    gradient_checkpointing: bool
    max_length: int
    seed: int


def load_for_training(hf_path: Path, choice: BackendChoice, lora: LoraSettings) -> LoadedModel:
    """Load the base model and tokenizer on the chosen backend and wrap the model with a new LoRA adapter."""
    if choice.backend == BACKEND_UNSLOTH:
        return _load_unsloth(hf_path, choice, lora)
    return _load_transformers(hf_path, choice, lora)


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(hf_path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(hf_path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {hf_path} ({exc}); the model folder needs tokenizer files") from exc
    return tokenizer


def _load_transformers(hf_path: Path, choice: BackendChoice, lora: LoraSettings) -> LoadedModel:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(hf_path)
    options: dict[str, Any] = {"dtype": torch_dtype(choice.dtype)}
    if choice.quantization == "4bit":
        options["quantization_config"] = _bitsandbytes_config(choice)
    if choice.device == "cuda":
        options["device_map"] = {"": 0}
    torch.manual_seed(lora.seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(hf_path), **options)
    except (OSError, ValueError) as exc:
        raise ModelError(f"transformers cannot load {hf_path} for training ({exc})") from exc
    model.config.use_cache = False
    if choice.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=lora.gradient_checkpointing)
    names, pattern = lora_target_modules(model)
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=pattern if pattern is not None else names,
    )
    with quiet_peft_warnings():
        model = get_peft_model(model, config)
    if lora.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LoadedModel(model, tokenizer, choice, names, pattern)


def _bitsandbytes_config(choice: BackendChoice) -> Any:
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise BackendError(
            "4-bit training on a GPU needs bitsandbytes; install it with pip install bitsandbytes "
            "or pass --quantization none"
        ) from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(choice.dtype),
    )


def _load_unsloth(hf_path: Path, choice: BackendChoice, lora: LoraSettings) -> LoadedModel:
    # NOTE: this path needs a CUDA GPU and has not run in this project's CPU-only CI.
    unsloth = _import_unsloth()
    fast = unsloth.FastLanguageModel
    model, tokenizer = fast.from_pretrained(
        model_name=str(hf_path), max_seq_length=lora.max_length, dtype=torch_dtype(choice.dtype),
        load_in_4bit=choice.quantization == "4bit",
    )
    names, pattern = lora_target_modules(model)
    if pattern is not None:
        raise BackendError(
            "unsloth's text trainer cannot restrict LoRA to the text decoder of this multimodal checkpoint; "
            "use --backend transformers"
        )
    model = fast.get_peft_model(
        model, r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none", target_modules=names,
        use_gradient_checkpointing="unsloth" if lora.gradient_checkpointing else False, random_state=lora.seed,
        max_seq_length=lora.max_length,
    )
    return LoadedModel(model, tokenizer, choice, names, pattern)


@contextlib.contextmanager
def quiet_peft_warnings():
    """Silence the FutureWarning peft 0.21 triggers through transformers' renamed is_gradient_checkpointing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_frozen_copy(hf_path: Path, choice: BackendChoice) -> Any:
    """Load a second, frozen copy of the base model: the reference model where adapters cannot be disabled."""
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"dtype": torch_dtype(choice.dtype)}
    if choice.quantization == "4bit":
        options["quantization_config"] = _bitsandbytes_config(choice)
    if choice.device == "cuda":
        options["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(hf_path), **options)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.config.use_cache = False
    return model
