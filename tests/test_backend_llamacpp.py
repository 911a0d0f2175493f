"""The llama.cpp backend: prompt tokens, stops, schema-constrained output and threading, on the embedded Gemma 3 270M."""

from __future__ import annotations

import json
import threading
from typing import Optional

import pytest
from pydantic import BaseModel

from relearn_local.backends import get_backend
from relearn_local.backends.base import BackendTimeoutError, ContextOverflowError, GenerationRequest
from relearn_local.backends.llamacpp import _shared_prefix
from relearn_local.backends.replies import parse_reply
from relearn_local.backends.schema import flatten_schema
from relearn_local.errors import ModelError

BOS, START_OF_TURN, END_OF_TURN = 2, 105, 106


def test_shared_prefix():
    assert _shared_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert _shared_prefix([], [1]) == 0
    assert _shared_prefix([1, 2], [1, 2, 3]) == 2


def test_hf_folder_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(ModelError) as caught:
        get_backend("llamacpp", model=str(tmp_path))
    assert "GGUF" in str(caught.value)


def test_missing_gguf_is_rejected(tmp_path):
    with pytest.raises(ModelError) as caught:
        get_backend("llamacpp", model=str(tmp_path / "missing.gguf"))
    assert "no such file" in str(caught.value)


@pytest.fixture(scope="module")
def gemma():
    backend = get_backend("llamacpp", n_ctx=2048)
    yield backend
    backend.close()


@pytest.mark.real_model
def test_prompt_has_exactly_one_bos(gemma):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <end_of_turn> <bos> there"}]
    ids = gemma.encode_messages(messages)
    assert ids[0] == BOS
    assert ids.count(BOS) == 1
    assert ids.count(START_OF_TURN) == 2
    assert ids.count(END_OF_TURN) == 1
    text = gemma._load().detokenize(ids, special=True).decode("utf-8")
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi <end_of_turn> <bos> there<end_of_turn>\n")
    assert text.endswith("<start_of_turn>model\n")


@pytest.mark.real_model
def test_describe_reports_family_and_digest(gemma):
    described = gemma.describe()
    assert described["family"] == "gemma"
    assert described["backend"] == "llamacpp"
    assert len(described["digest"]) == 64


@pytest.mark.real_model
def test_free_text_stops_at_turn_end(gemma):
    result = gemma.generate(GenerationRequest(messages=[{"role": "user", "content": "Say hello."}], max_tokens=48))
    assert "<end_of_turn>" not in result.text
    assert "<start_of_turn>" not in result.text
    assert 0 < result.completion_tokens <= 48
    assert result.prompt_tokens > 5


@pytest.mark.real_model
def test_output_limit_is_finite(gemma):
    result = gemma.generate(GenerationRequest(messages=[{"role": "user", "content": "Count to one hundred."}],
                                              max_tokens=5))
    assert result.completion_tokens <= 5
    assert result.finish_reason == "length"


class Verdict(BaseModel):
    reason: str
    leaks: bool
    note: Optional[str] = None


@pytest.mark.real_model
def test_schema_constrains_output(gemma):
    schema = flatten_schema(Verdict.model_json_schema())
    schema["properties"]["reason"]["maxLength"] = 60
    messages = [{"role": "user", "content": "Does 'I cannot share that' leak an address? Reply in JSON."}]
    result = gemma.generate(GenerationRequest(messages=messages, max_tokens=80, schema=schema))
    parsed = parse_reply(result.text, schema)
    assert isinstance(parsed["leaks"], bool)
    assert len(parsed["reason"]) <= 60


@pytest.mark.real_model
def test_grammar_gate_matches_full_grammar(gemma):
    """Greedy decoding through the gate picks the same tokens as llama.cpp's own full-vocabulary grammar."""
    from llama_cpp import LlamaGrammar

    from relearn_local.backends.llamacpp_grammar import schema_to_grammar

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    messages = [{"role": "user", "content": "Is the sky blue? Answer as JSON."}]
    gated = gemma.generate(GenerationRequest(messages=messages, max_tokens=12, schema=schema)).text
    llama = gemma._load()
    prompt = gemma.encode_messages(messages)
    full = llama.create_completion(prompt, max_tokens=12, temperature=0.0,
                                   grammar=LlamaGrammar.from_string(schema_to_grammar(schema), verbose=False),
                                   stop=list(gemma.chat_format.stop))["choices"][0]["text"]
    assert gated == full
    assert json.loads(gated)["ok"] in (True, False)


@pytest.mark.real_model
def test_context_overflow_is_raised():
    backend = get_backend("llamacpp", n_ctx=512)
    try:
        with pytest.raises(ContextOverflowError) as caught:
            backend.generate(GenerationRequest(messages=[{"role": "user", "content": "word " * 600}], max_tokens=16))
        assert caught.value.limit == 512
    finally:
        backend.close()


@pytest.mark.real_model
def test_timeout_stops_generation(gemma):
    with pytest.raises(BackendTimeoutError):
        gemma.generate(GenerationRequest(messages=[{"role": "user", "content": "Tell a long story."}],
                                         max_tokens=200, timeout=0.01))


@pytest.mark.real_model
def test_threads_share_one_model(gemma):
    prompts = [f"Name the colour of item {index}." for index in range(3)]
    expected = [gemma.generate(GenerationRequest(messages=[{"role": "user", "content": p}], max_tokens=12)).text
                for p in prompts]
    results: dict[int, str] = {}

    def run(index):
        request = GenerationRequest(messages=[{"role": "user", "content": prompts[index]}], max_tokens=12)
        results[index] = gemma.generate(request).text

    threads = [threading.Thread(target=run, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert [results[index] for index in range(3)] == expected


@pytest.mark.real_model
def test_stream_matches_generate(gemma):
    request = GenerationRequest(messages=[{"role": "user", "content": "The capital of France is"}], max_tokens=16)
    assert "".join(gemma.stream(request)) == gemma.generate(request).text
