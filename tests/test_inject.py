"""``inject`` on the tiny model: the merged checkpoint works as a base, keeps tied embeddings and stop tokens."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from relearn_local.cli import cli
from relearn_local.config import build_config
from relearn_local.errors import ConfigError
from relearn_local.models import resolve_base
from relearn_local.train.config import InjectConfig
from relearn_local.train.inject import run_inject
from relearn_local.train.stage import run_train

from train_support import example_pairs, read_metrics, train_config, write_augmented, write_qa_file


def inject_config(base, out, data, **overrides):
    values = {"base": str(base), "out": out, "data": data, "batch_size": 2, "epochs": 1, "max_length": 128,
              "lora_rank": 4, "learning_rate": 5e-3, "max_steps": 3}
    values.update(overrides)
    return build_config(InjectConfig, None, values)


@pytest.fixture(scope="module")
def injected(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inject")
    facts = write_qa_file(folder / "facts.json", example_pairs("forget.json", 4))
    more = write_qa_file(folder / "more.jsonl", example_pairs("retain.json", 2))
    result = run_inject(inject_config(tiny_model_dir, folder / "run", [facts, more]))
    return result, facts


def test_inject_writes_merged_model(injected, tiny_model_dir):
    result, _ = injected
    model_dir = result.model
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json",
                 "relearn_base.json"):
        assert (model_dir / name).exists(), name
    record = json.loads((model_dir / "relearn_base.json").read_text())
    assert record["base"] == str(tiny_model_dir)
    assert record["family"] == "gemma"
    assert result.plan.training_examples == 6
    assert result.steps == 3
    assert all(math.isfinite(row["forget_ce"]) for row in read_metrics(result.out))
    assert all(row["retain_ce"] is None and row["kl"] is None for row in read_metrics(result.out))
    assert json.loads((result.out / "state.json").read_text())["status"] == "complete"


def test_merged_model_keeps_ties_and_stops(injected, tiny_model_dir):
    from transformers import AutoModelForCausalLM, GenerationConfig

    result, _ = injected
    merged = AutoModelForCausalLM.from_pretrained(str(result.model))
    assert merged.config.tie_word_embeddings
    assert merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    base_generation = GenerationConfig.from_pretrained(str(tiny_model_dir))
    merged_generation = GenerationConfig.from_pretrained(str(result.model))
    assert merged_generation.eos_token_id == base_generation.eos_token_id
    assert isinstance(merged_generation.eos_token_id, list) and len(merged_generation.eos_token_id) == 2


def test_merged_model_equals_adapter_model(injected, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, _ = injected
    merged = AutoModelForCausalLM.from_pretrained(str(result.model)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                        str(result.adapter)).eval()
    ids = torch.tensor([[2, 5, 17, 42, 99, 7]])
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        adapted_logits = adapted(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-3


def test_merged_model_is_a_train_base(injected, tmp_path):
    result, facts = injected
    resolved = resolve_base(str(result.model), need_hf=True)
    assert resolved.family == "gemma"
    assert resolved.kind == "hf"
    augmented = write_augmented(tmp_path / "aug", example_pairs("forget.json", 2))
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", 2))
    trained = run_train(train_config(result.model, tmp_path / "t", augmented, retain, max_steps=1))
    recorded = json.loads((trained.adapter / "relearn_base.json").read_text())
    assert recorded["base"] == str(result.model)


def test_inject_needs_data():
    with pytest.raises(ConfigError, match="--data"):
        build_config(InjectConfig, None, {"out": "x"})


def test_inject_cli_dry_run(tiny_model_dir, tmp_path):
    facts = write_qa_file(tmp_path / "facts.json", example_pairs("forget.json", 3))
    result = CliRunner().invoke(cli, ["inject", "--base", str(tiny_model_dir), "--data", str(facts),
                                      "--data", str(facts), "--out", str(tmp_path / "o"), "--dry-run"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "inject plan (dry run" in result.output
    assert "6 examples" in result.output
    assert "LoRA rank 8, alpha 16, dropout 0.1" in result.output
    assert not (tmp_path / "o").exists()
