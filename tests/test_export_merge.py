"""The merge: merged logits equal the adapter model's and differ from the base, no 4-bit, embeddings stay tied.

The logits are recomputed here from the saved files, independently of the
numbers the export reports: the merged checkpoint loaded from ``merged/``
against ``PeftModel(base, adapter)`` and against the base, on five forget
questions, at every prompt position.
"""

from __future__ import annotations

import json
import shutil

import pytest

from export_support import (FORGET, converter, export_base_dir, export_tiny, make_adapter,  # noqa: F401
                            tiny_adapter, tiny_export_f16)
from relearn_local.chat_formats import encode_prompt, get_chat_format
from relearn_local.errors import ExportError

GEMMA = get_chat_format("gemma")
# float32 merge: W + BA against Wx + B(Ax) differ only in rounding.
ADAPTER_TOLERANCE = 1e-4
MIN_BASE_DIFFERENCE = 0.05


def forget_questions(count: int = 5) -> list[str]:
    return [record["question"] for record in json.loads(FORGET.read_text(encoding="utf-8"))[:count]]


def logits_of(model, tokenizer, questions):
    import torch

    with torch.inference_mode():
        return [model(torch.tensor([encode_prompt(tokenizer, GEMMA, question)])).logits[0] for question in questions]


def test_merged_logits_match_adapter_and_differ_from_base(tiny_export_f16, export_base_dir, tiny_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions = forget_questions()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_export_f16.merged_dir))
    merged = AutoModelForCausalLM.from_pretrained(str(tiny_export_f16.merged_dir), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(export_base_dir), dtype=torch.float32).eval()
    base_logits = logits_of(base, tokenizer, questions)
    adapter_model = PeftModel.from_pretrained(base, str(tiny_adapter)).eval()
    adapter_logits = logits_of(adapter_model, tokenizer, questions)
    merged_logits = logits_of(merged, tokenizer, questions)
    for merged_row, adapter_row, base_row in zip(merged_logits, adapter_logits, base_logits):
        assert float((merged_row - adapter_row).abs().max()) <= ADAPTER_TOLERANCE
        assert float((merged_row - base_row).abs().max()) >= MIN_BASE_DIFFERENCE


def test_reported_merge_check(tiny_export_f16):
    check = tiny_export_f16.merge_check
    assert check.passed
    assert check.questions == 5
    assert check.max_diff_to_adapter <= check.tolerance
    assert check.max_diff_to_base >= check.min_effect
    assert check.tied_embeddings is True


def test_merged_checkpoint_is_not_quantized_and_stays_tied(tiny_export_f16):
    from safetensors import safe_open

    merged = tiny_export_f16.merged_dir
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True
    with safe_open(str(merged / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert "lm_head.weight" not in names
    assert not any("lora" in name for name in names)


def test_merged_checkpoint_serves_the_training_format(tiny_export_f16, tiny_tokenizer):
    from transformers import AutoTokenizer

    merged = tiny_export_f16.merged_dir
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    question = forget_questions(1)[0]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == GEMMA.with_bos(GEMMA.prompt(question))
    generation = json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
    end_of_turn = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in generation["eos_token_id"]
    record = json.loads((merged / "relearn_base.json").read_text(encoding="utf-8"))
    assert record["family"] == "gemma"
    assert record["derived_by"] == "relearn-local export"


def test_untrained_adapter_is_rejected(tmp_path_factory, export_base_dir, converter):
    adapter = make_adapter(export_base_dir, tmp_path_factory.mktemp("zero-adapter"), scale=0.0)
    out = tmp_path_factory.mktemp("zero-adapter-export") / "export"
    with pytest.raises(ExportError, match="was the adapter trained"):
        export_tiny(tmp_path_factory, adapter, "f16", out=out)
    assert not (out / "merged").exists()
    assert not list(out.glob("*.gguf"))
    assert json.loads((out / "state.json").read_text(encoding="utf-8"))["status"] == "failed"


def test_quantized_base_is_rejected_before_merging(tmp_path_factory, export_base_dir, tiny_adapter, converter,
                                                   monkeypatch):
    base = tmp_path_factory.mktemp("base-4bit") / "model"
    shutil.copytree(export_base_dir, base)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    adapter = tmp_path_factory.mktemp("adapter-for-4bit") / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    monkeypatch.setattr("relearn_local.export.stage.merge_adapter", _merge_must_not_run)
    with pytest.raises(ExportError, match="quantized checkpoint .bitsandbytes.*16-bit or float32"):
        export_tiny(tmp_path_factory, adapter, "f16", base=str(base))


def test_adapter_for_another_base_is_rejected(tmp_path_factory, export_base_dir, tiny_adapter, converter):
    from relearn_local.errors import ModelError
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    other = tmp_path_factory.mktemp("other-base")
    config = Gemma3TextConfig(vocab_size=1001, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16)
    Gemma3ForCausalLM(config).save_pretrained(str(other))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(export_base_dir / name, other / name)
    with pytest.raises(ModelError, match="does not load onto the base"):
        export_tiny(tmp_path_factory, tiny_adapter, "f16", base=str(other))


def _merge_must_not_run(*args, **kwargs):
    raise AssertionError("the merge started although preflight should have failed")
