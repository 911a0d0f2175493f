"""Answer generation: reply cleaning, backend choice, and the transformers backend on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relearn_local.backends import get_backend
from relearn_local.backends.base import GenerationBackend, GenerationRequest
from relearn_local.backends.transformers_backend import TransformersBackend, adapter_base_spec, locate_adapter
from relearn_local.errors import ConfigError, ModelError
from relearn_local.evaluate.config import EvaluateConfig
from relearn_local.evaluate.generation import choose_backend, clean_answer

QUESTION = "Where does Mara Lindqvist live?"

CLEAN_CASES = [
    ("She lives in Oslo.", "She lives in Oslo.", "plain reply"),
    ("She lives in Oslo.<end_of_turn>\n<start_of_turn>user\nAnd her email?", "She lives in Oslo.", "Gemma turn"),
    ("She lives in Oslo.<|eot_id|><|start_header_id|>user", "She lives in Oslo.", "Llama 3 turn"),
    ("She lives in Oslo.<|im_end|>\n<|im_start|>user", "She lives in Oslo.", "ChatML turn"),
    (f"{QUESTION}\nShe lives in Oslo.", "She lives in Oslo.", "echoed question"),
    (f"Question: {QUESTION}\nAnswer: She lives in Oslo.", "She lives in Oslo.", "echoed labelled pair"),
    ("Answer: She lives in Oslo.", "She lives in Oslo.", "leading answer label"),
    ("She lives in Oslo.\nQuestion: What is her email?\nAnswer: mara@example.invalid",
     "She lives in Oslo.", "invented question/answer pair"),
    ("She lives in Oslo. Q: And her phone? A: 555-0100", "She lives in Oslo.", "invented inline pair"),
    (f"She lives in Oslo. {QUESTION} She lives in Oslo.", "She lives in Oslo.", "repeated question"),
    ("She lives in Oslo.\nUser: thanks", "She lives in Oslo.", "invented user turn"),
    ("", "", "empty reply"),
    ("The answer: 42 Elm Road.", "The answer: 42 Elm Road.", "colon inside the reply"),
]


@pytest.mark.parametrize("raw, expected, reason", CLEAN_CASES)
def test_clean_answer(raw, expected, reason):
    assert clean_answer(raw, QUESTION) == expected, reason


@pytest.mark.parametrize("model, backend", [
    ("ollama:my-model", "ollama"), ("gemma3-270m", "transformers"), ("some/folder", "transformers"),
])
def test_choose_backend(model, backend):
    assert choose_backend(EvaluateConfig(model=model)) == backend


def test_choose_backend_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    assert choose_backend(EvaluateConfig(model=str(path))) == "llamacpp"
    assert choose_backend(EvaluateConfig(model=str(path), backend="transformers")) == "transformers"


def test_adapter_with_gguf_rejected(tmp_path):
    from relearn_local.evaluate.generation import open_backend

    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="--adapter"):
        open_backend(EvaluateConfig(model=str(path), adapter=tmp_path))


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    backend = TransformersBackend(model=str(tiny_model_dir), max_batch_size=4)
    yield backend
    backend.close()


def _request(question: str, max_tokens: int = 12) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": question}], max_tokens=max_tokens)


def test_backend_follows_protocol(tiny_backend):
    assert isinstance(tiny_backend, GenerationBackend)
    assert tiny_backend.describe()["backend"] == "transformers"
    assert tiny_backend.describe()["family"] == "gemma"


def test_registry_creates_transformers_backend(tiny_model_dir):
    backend = get_backend("transformers", model=str(tiny_model_dir))
    assert backend.name == "transformers"
    backend.close()


def test_stop_ids_include_turn_markers(tiny_backend, tiny_tokenizer):
    for marker in ("<end_of_turn>", "<start_of_turn>"):
        assert tiny_tokenizer.convert_tokens_to_ids(marker) in tiny_backend.stop_ids
    assert tiny_tokenizer.eos_token_id in tiny_backend.stop_ids


def test_prompt_has_one_bos(tiny_backend, tiny_tokenizer):
    ids = tiny_backend.encode_messages([{"role": "user", "content": "Hello"}])
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.bos_token_id) == 1


def test_only_new_tokens_returned(tiny_backend):
    result = tiny_backend.generate(_request(QUESTION, max_tokens=10))
    assert result.prompt_tokens == len(tiny_backend.encode_messages([{"role": "user", "content": QUESTION}]))
    assert 0 <= result.completion_tokens <= 10
    assert "<start_of_turn>" not in result.text
    assert QUESTION not in result.text


def test_greedy_generation_repeats(tiny_backend):
    first = tiny_backend.generate(_request(QUESTION)).text
    second = tiny_backend.generate(_request(QUESTION)).text
    assert first == second


def test_batch_matches_single(tiny_backend):
    questions = [QUESTION, "Who is Tomasz?", "What is the capital of France, and why is it famous?"]
    batched = [result.text for result in tiny_backend.generate_batch([_request(q) for q in questions])]
    single = [tiny_backend.generate(_request(q)).text for q in questions]
    assert batched == single


def test_decode_cuts_at_end_of_turn(tiny_backend, tiny_tokenizer):
    words = tiny_tokenizer("She lives in Oslo.", add_special_tokens=False)["input_ids"]
    end = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    text, kept, finish = tiny_backend.decode_reply(words + [end] + words)
    assert text == "She lives in Oslo."
    assert kept == len(words)
    assert finish == "stop"


def test_decode_without_stop_is_length(tiny_backend, tiny_tokenizer):
    words = tiny_tokenizer("She lives", add_special_tokens=False)["input_ids"]
    assert tiny_backend.decode_reply(words)[2] == "length"


def test_decode_applies_request_stop_strings(tiny_backend, tiny_tokenizer):
    words = tiny_tokenizer("She lives in Oslo.", add_special_tokens=False)["input_ids"]
    assert tiny_backend.decode_reply(words, stop=[" in"])[0] == "She lives"


def test_stream_matches_generate(tiny_backend):
    request = _request("Who is Tomasz?", max_tokens=10)
    assert "".join(tiny_backend.stream(request)) == tiny_backend.generate(request).text


def _save_adapter(base_dir: Path, folder: Path, record: bool = True) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(str(folder))
    if record:
        (folder / "relearn_base.json").write_text(json.dumps({"base": str(base_dir), "hf_path": str(base_dir),
                                                              "family": "gemma", "digest": "x"}))
    return folder


def test_adapter_from_train_run_folder(tmp_path, tiny_model_dir):
    import torch

    _save_adapter(tiny_model_dir, tmp_path / "run" / "adapter")
    assert locate_adapter(tmp_path / "run") == tmp_path / "run" / "adapter"
    backend = TransformersBackend(adapter=str(tmp_path / "run"))
    base = TransformersBackend(model=str(tiny_model_dir))
    description = backend.describe()
    assert description["adapter"] == str(tmp_path / "run" / "adapter")
    assert description["adapter_digest"]
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(backend.hf_model.state_dict()[weight], base.hf_model.state_dict()[weight])
    backend.close()
    base.close()


def test_adapter_as_model_argument(tmp_path, tiny_model_dir):
    adapter = _save_adapter(tiny_model_dir, tmp_path / "adapter")
    backend = TransformersBackend(model=str(adapter))
    assert backend.adapter == adapter
    backend.close()


def test_adapter_without_base_record(tmp_path, tiny_model_dir):
    adapter = _save_adapter(tiny_model_dir, tmp_path / "adapter", record=False)
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "org/not-here"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="base model"):
        adapter_base_spec(adapter)


def test_adapter_folder_missing_config(tmp_path):
    with pytest.raises(ModelError, match="adapter_config.json"):
        TransformersBackend(adapter=str(tmp_path))
