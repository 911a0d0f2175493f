"""The folder handed to llama.cpp's converter: the model's files plus the tokenizer files the converter needs.

The converter writes a Gemma vocabulary as SentencePiece (token scores and
types, ``tokenizer.ggml.model = llama``) only when ``tokenizer.model`` is
present. From ``tokenizer.json`` alone it writes a GPT-2 style vocabulary
without scores. Ollama's Gemma 3 engine reads ``tokenizer.ggml.scores`` for
its SentencePiece tokenizer (ollama model/models/gemma3/model.go), so such a
GGUF would tokenize wrongly there. Checkpoints dequantized from a GGUF, like
the embedded Gemma 3 270M, have only ``tokenizer.json``, so a
``tokenizer.model`` equivalent to it is written here.

The converter also takes token types (control or user-defined) from
``added_tokens_decoder`` in ``tokenizer_config.json``, which transformers 5
no longer writes, and the chat template from ``tokenizer_config.json``. Both
are filled in from ``tokenizer.json`` and the family's chat format. The
model folder itself is not changed: the staging folder links its weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chat_formats import ChatFormat
from ..errors import ExportError
from ..runs import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# Files the converter must not read from the staging folder in their original form.
_REWRITTEN = {"tokenizer_config.json", "chat_template.jinja", "chat_template.json"}


@dataclass
class ConverterInput:
    """The staging folder and what was added to it."""

    folder: Path
    wrote_sentencepiece_model: bool
    added_token_types: int


def stage_converter_input(model_dir: Path, staging: Path, chat_format: ChatFormat) -> ConverterInput:
    """Fill ``staging`` with links to ``model_dir`` and the tokenizer files the converter needs."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name in _REWRITTEN or item.name.startswith("."):
            continue
        os.symlink(item.resolve(), staging / item.name)

    tokenizer_json = _read_json(model_dir / "tokenizer.json")
    sentencepiece_bpe = tokenizer_json is not None and is_sentencepiece_bpe(tokenizer_json)
    wrote_model = False
    if sentencepiece_bpe and not (model_dir / "tokenizer.model").exists():
        model_bytes = sentencepiece_model_bytes(tokenizer_json, _special_token_ids(model_dir))
        atomic_write_bytes(staging / "tokenizer.model", model_bytes)
        wrote_model = True
        logger.info("wrote a SentencePiece tokenizer.model equivalent to %s for the converter",
                    model_dir / "tokenizer.json")

    config = _read_json(model_dir / "tokenizer_config.json") or {}
    added = 0
    if tokenizer_json is not None and not config.get("added_tokens_decoder"):
        config["added_tokens_decoder"] = _added_tokens_decoder(tokenizer_json)
        added = len(config["added_tokens_decoder"])
    if sentencepiece_bpe and "add_prefix_space" not in config:
        # Read by the Llama converter; llama.cpp otherwise puts a space before the text.
        config["add_prefix_space"] = adds_prefix_space(tokenizer_json)
    config["chat_template"] = chat_format.jinja_template()
    atomic_write_json(staging / "tokenizer_config.json", config)
    return ConverterInput(staging, wrote_model, added)


def _added_tokens_decoder(tokenizer_json: dict) -> dict[str, dict[str, Any]]:
    """Return ``added_tokens_decoder`` in transformers 4's tokenizer_config.json layout."""
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {str(token["id"]): {key: token.get(key, False) for key in keys}
            for token in tokenizer_json.get("added_tokens", [])}


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: malformed JSON at line {exc.lineno}; the merged checkpoint is damaged") from None


def is_sentencepiece_bpe(tokenizer_json: dict) -> bool:
    """Return True for a ``tokenizer.json`` that encodes a SentencePiece BPE model.

    Such a tokenizer is a BPE with byte fallback that writes spaces as U+2581,
    as transformers builds it from a SentencePiece model or a GGUF.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    text = json.dumps([tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")])
    return "\u2581" in text or "\\u2581" in text or "Metaspace" in text


def adds_prefix_space(tokenizer_json: dict) -> bool:
    """Return True when the tokenizer puts U+2581 before the text (SentencePiece's add_dummy_prefix)."""
    normalizer = json.dumps(tokenizer_json.get("normalizer"))
    pre_tokenizer = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer]) if isinstance(pre_tokenizer, dict) else []
    metaspace = [step for step in steps if isinstance(step, dict) and step.get("type") == "Metaspace"]
    if any(step.get("prepend_scheme") in ("first", "always") or step.get("add_prefix_space") for step in metaspace):
        return True
    return '"Prepend"' in normalizer


def _special_token_ids(model_dir: Path) -> dict[str, int]:
    """Return the ids of unk, bos, eos and pad from config.json, for the SentencePiece trainer spec."""
    config = _read_json(model_dir / "config.json") or {}
    ids = {}
    for name in ("unk", "bos", "eos", "pad"):
        value = config.get(f"{name}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            ids[name] = value
    return ids


def sentencepiece_model_bytes(tokenizer_json: dict, special_ids: dict[str, int] | None = None) -> bytes:
    """Serialize a SentencePiece BPE model with the same pieces, ids and merge order as ``tokenizer_json``.

    SentencePiece BPE (and llama.cpp's and Ollama's implementations of it)
    merge the adjacent pair whose joined piece has the highest score, while a
    ``tokenizer.json`` BPE applies merges by rank. Scoring each piece with
    minus the rank of the first merge that produces it makes both pick the
    same merge. Pieces that no merge produces score below every merged piece.
    Added tokens become control pieces (special) or user-defined pieces.
    """
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    model = tokenizer_json["model"]
    vocabulary: dict[str, int] = model["vocab"]
    added = {token["id"]: token for token in tokenizer_json.get("added_tokens", [])}
    size = max(max(vocabulary.values(), default=-1), max(added, default=-1)) + 1
    pieces: list[str | None] = [None] * size
    for piece, index in vocabulary.items():
        pieces[index] = piece
    for index, token in added.items():
        pieces[index] = token["content"]
    merges = model.get("merges") or []
    rank: dict[str, int] = {}
    for position, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, position)

    proto = model_pb2.ModelProto()
    piece_types = model_pb2.ModelProto.SentencePiece.Type
    for index, piece in enumerate(pieces):
        entry = proto.pieces.add()
        entry.piece = piece if piece is not None else f"<unused_id_{index}>"
        entry.type = _piece_type(piece_types, piece, added.get(index), model.get("unk_token"))
        entry.score = -float(rank.get(piece, len(merges) + index)) if entry.type == piece_types.NORMAL else 0.0
    _fill_specs(proto, model_pb2, tokenizer_json, size, special_ids)
    return proto.SerializeToString()


def _piece_type(piece_types: Any, piece: str | None, added: dict | None, unknown: str | None) -> int:
    if piece is None:
        return piece_types.UNUSED
    if piece == unknown:
        return piece_types.UNKNOWN
    if added is not None:
        return piece_types.CONTROL if added.get("special") else piece_types.USER_DEFINED
    if _BYTE_PIECE.match(piece):
        return piece_types.BYTE
    return piece_types.NORMAL


def _fill_specs(proto: Any, model_pb2: Any, tokenizer_json: dict, size: int, special_ids: dict[str, int] | None) -> None:
    model = tokenizer_json["model"]
    trainer = proto.trainer_spec
    trainer.model_type = model_pb2.TrainerSpec.BPE
    trainer.vocab_size = size
    trainer.byte_fallback = True
    ids = dict(special_ids or {})
    if model.get("unk_token") in model["vocab"]:
        ids["unk"] = model["vocab"][model["unk_token"]]
    trainer.unk_id = ids.get("unk", 0)
    trainer.bos_id = ids.get("bos", -1)
    trainer.eos_id = ids.get("eos", -1)
    trainer.pad_id = ids.get("pad", -1)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = adds_prefix_space(tokenizer_json)
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
