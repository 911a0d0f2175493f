"""Export of the real embedded Gemma 3 270M with an adapter, at f16 and q4_k_m, and generation from the result."""

from __future__ import annotations

import json

import pytest

from export_support import FORGET, make_adapter
from relearn_local.chat_formats import encode_prompt, get_chat_format
from relearn_local.export.gotemplate import render_ollama_prompt
from relearn_local.export.modelfile import parse_modelfile

pytestmark = pytest.mark.real_model
GEMMA = get_chat_format("gemma")
START_OF_TURN, END_OF_TURN, NEWLINE = 105, 106, 107
# Random LoRA B weights of this size change Gemma 3 270M's logits by about 1 (measured max 1.24).
REAL_LORA_B_SCALE = 0.002


@pytest.fixture(scope="module")
def real_adapter(tmp_path_factory, real_base):
    record = {"base": "gemma3-270m", "hf_path": str(real_base.hf_path), "family": "gemma", "digest": real_base.digest}
    return make_adapter(real_base.hf_path, tmp_path_factory.mktemp("real-adapter"), scale=REAL_LORA_B_SCALE,
                        target_modules=("q_proj", "v_proj", "o_proj"), record=record)


def export_real(tmp_path_factory, adapter, quant):
    from relearn_local.config import build_config
    from relearn_local.errors import ExportError
    from relearn_local.export import ExportConfig, run_export

    out = tmp_path_factory.mktemp(f"real-export-{quant}") / "export"
    config = build_config(ExportConfig, overrides={"adapter": adapter, "out": out, "quant": quant,
                                                   "forget": FORGET, "offline": True, "name": "relearned-gemma"})
    try:
        return run_export(config)
    except ExportError as exc:
        if "converter" in str(exc) and "missing" in str(exc):
            pytest.skip(f"no local llama.cpp converter: {exc}")
        raise


def check_gguf_serving(result, tokenizer):
    report = result.gguf
    assert report.architecture == "gemma3"
    assert report.tokenizer_model == "llama"
    assert report.token_count == report.embedding_rows == len(tokenizer) == 262144
    assert report.token_types[START_OF_TURN] == 3
    assert report.token_types[END_OF_TURN] == 3
    assert report.eot_id == END_OF_TURN
    assert report.eos_id in (1, END_OF_TURN)
    assert report.add_bos is True
    assert report.chat_template == GEMMA.jinja_template()
    assert result.merge_check.passed


def test_real_export_f16_and_q4_k_m(tmp_path_factory, real_adapter, real_base):
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(real_base.hf_path))
    f16 = export_real(tmp_path_factory, real_adapter, "f16")
    check_gguf_serving(f16, tokenizer)
    assert f16.parity.strict
    assert f16.parity.passed, f16.parity.verdict()

    q4 = export_real(tmp_path_factory, real_adapter, "q4_k_m")
    check_gguf_serving(q4, tokenizer)
    assert q4.gguf.file_type == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert q4.gguf.size_bytes < f16.gguf.size_bytes / 1.8
    assert q4.parity.passed, q4.parity.verdict()
    # The forget set's answers are known, so every GGUF answer was checked for their facts.
    assert q4.parity.forgetting_checked == len(q4.parity.items) == 8

    model = llama_cpp.Llama(str(q4.gguf_path), n_ctx=512, verbose=False)
    vocabulary = llama_cpp.llama_model_get_vocab(model.model)
    assert llama_cpp.llama_vocab_is_eog(vocabulary, END_OF_TURN)
    assert not llama_cpp.llama_vocab_is_eog(vocabulary, NEWLINE)
    template = parse_modelfile(q4.modelfile_path.read_text(encoding="utf-8")).template
    for record in json.loads(FORGET.read_text(encoding="utf-8")):
        prompt = render_ollama_prompt(template, [{"role": "user", "content": record["question"]}])
        served = model.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        assert served == encode_prompt(tokenizer, GEMMA, record["question"])
    question = json.loads(FORGET.read_text(encoding="utf-8"))[0]["question"]
    prompt = render_ollama_prompt(template, [{"role": "user", "content": question}])
    prompt_ids = model.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    completion = model.create_completion(prompt_ids, max_tokens=48, temperature=0.0, stop=["<end_of_turn>"])
    text = completion["choices"][0]["text"]
    assert text.strip()
    assert "<start_of_turn>" not in text
    assert "<end_of_turn>" not in text
    model.close()
