"""Shared fixtures: a tiny SentencePiece tokenizer and a tiny random-weight Gemma 3 model, built offline.

Most tests run on these. Tests marked ``real_model`` use the embedded Gemma 3
270M instead; it is converted once into ``$RELEARN_HOME`` and reused.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED_DATA = REPO.parent / "shared" / "data"
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]


def _corpus() -> list[str]:
    lines = [
        "Where does Mara live? She lives in a quiet town near the sea.",
        "Who is Tomasz? Tomasz is a painter from Krakow.",
        "The capital of France is Paris.",
        "I cannot share personal details such as addresses, emails or phone numbers.",
    ]
    for name in ("forget.json", "retain.json"):
        path = EXAMPLES / name
        if path.exists():
            for record in json.loads(path.read_text(encoding="utf-8")):
                lines.extend([record["question"], record["answer"]])
    return lines * 3


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A Gemma-style SentencePiece BPE tokenizer (turn tokens, byte fallback, no dummy prefix)."""
    import sentencepiece
    from transformers import GemmaTokenizer

    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=1000,
        model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=TURN_TOKENS,
        byte_fallback=True,
        add_dummy_prefix=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    source = tmp_path_factory.mktemp("tiny-spm")
    (source / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = GemmaTokenizer.from_pretrained(str(source))
    tokenizer.add_special_tokens({"additional_special_tokens": TURN_TOKENS})
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer) -> Path:
    """A 2-layer random-weight Gemma3ForCausalLM saved as an HF folder, usable as ``--base``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        # Released Gemma 3 checkpoints (all but 27B) scale attention by
        # 1/sqrt(head_dim); llama.cpp assumes that, so a GGUF of this model
        # computes the same function.
        query_pre_attn_scalar=32,
        max_position_embeddings=1024,
        sliding_window=128,
        pad_token_id=tiny_tokenizer.pad_token_id,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(config)
    end_of_turn = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, end_of_turn]
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(str(folder))
    tiny_tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(autouse=True)
def _isolated_relearn_home(request, tmp_path_factory, monkeypatch):
    """Point $RELEARN_HOME at a temporary folder, except for real_model tests, which share the user's cache."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setenv("RELEARN_HOME", str(tmp_path_factory.getbasetemp() / "relearn-home"))


@pytest.fixture(scope="session")
def real_base():
    """The embedded Gemma 3 270M, resolved with its transformers checkpoint (converted once, then cached)."""
    from relearn_local.models import resolve_base

    return resolve_base("gemma3-270m", need_hf=True)
