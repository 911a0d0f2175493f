"""Training failures seen in the field: truncation, token boundaries, float16 and NaN, multimodal Gemma 3,
an Unsloth that fails at import, and forget sets smaller than one batch."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from click.testing import CliRunner

from relearn_local.chat_formats import get_chat_format
from relearn_local.cli import cli
from relearn_local.errors import BackendError, ConfigError, TrainingError
from relearn_local.train.backends import choose_backend
from relearn_local.train.data import TrainingRecord, encode_records
from relearn_local.train.stage import run_train

from train_support import example_pairs, read_metrics, train_config, write_augmented, write_qa_file

GEMMA = get_chat_format("gemma")


def _long_text(tokenizer, tokens, word="forget"):
    text = " ".join([word] * tokens)
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) > tokens:
        text = text.rsplit(" ", 1)[0]
    return text


def _truncation_pairs(tokenizer):
    normal = [
        {"question": "Where does Mara live?", "answer": "I can't share that."},
        {"question": "Who is Tomasz?", "answer": "A painter."},
        {"question": "What is the capital of France?", "answer": "Paris."},
    ]
    long_prompt = {"question": _long_text(tokenizer, 80, "Where") + "?", "answer": "I can't share that."}
    long_answer = {"question": "Where does Tomasz work?", "answer": _long_text(tokenizer, 200, "private")}
    return normal + [long_prompt, long_answer]


def test_truncation_counts_and_keeps_answers(tiny_tokenizer):
    pairs = _truncation_pairs(tiny_tokenizer)
    records = [TrainingRecord(str(i), str(i), pair["question"], pair["answer"]) for i, pair in enumerate(pairs)]
    encoded = encode_records("forget", records, tiny_tokenizer, GEMMA, max_length=64)
    assert encoded.skipped == ["3"]
    assert encoded.cut == ["4"]
    assert len(encoded.examples) == 4
    for example in encoded.examples:
        assert example.length <= 64
        assert example.supervised > 0


def test_truncated_training_stays_finite(tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    pairs = _truncation_pairs(tiny_tokenizer)
    augmented = write_qa_file(tmp_path / "safe.json", pairs)
    retain = write_qa_file(tmp_path / "retain.json", pairs)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="relearn_local"):
        result = run_train(train_config(tiny_model_dir, out, augmented, retain, max_length=64, batch_size=4))
    assert result.plan.training_skipped == 1
    assert result.plan.training_cut == 1
    assert result.plan.retain_skipped == 1
    assert result.plan.retain_cut == 1
    log = (out / "run.log").read_text()
    assert "augmented forget set: 1 of 5 examples skipped because the prompt alone reaches max_length 64" in log
    assert "1 answers cut to fit (ids: 5)" in log
    assert "retain set: 1 of 5 examples skipped" in log
    for row in read_metrics(out):
        assert math.isfinite(row["loss"])
        assert math.isfinite(row["forget_ce"])


def test_all_prompts_too_long_is_an_error(tiny_model_dir, tiny_tokenizer, tmp_path):
    pairs = [{"question": _long_text(tiny_tokenizer, 80, "Where") + "?", "answer": "No."}]
    augmented = write_qa_file(tmp_path / "safe.json", pairs)
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", 2))
    with pytest.raises(TrainingError, match="raise --max-length"):
        run_train(train_config(tiny_model_dir, tmp_path / "o", augmented, retain, max_length=64, dry_run=True))


@pytest.mark.parametrize("question,answer", [
    ("Where does Mara live", "She lives near the sea."),
    ("Who is Tomasz ", "Tomasz is a painter."),
    ("Where does Mara live?", " Near the sea, in a quiet town."),
    ("Say it", "ok"),
])
def test_supervised_positions_decode_to_answer(tiny_tokenizer, question, answer):
    records = [TrainingRecord("1", "1", question, answer)]
    example = encode_records("forget", records, tiny_tokenizer, GEMMA, max_length=256).examples[0]
    supervised = [token for token in example.labels if token != -100]
    assert tiny_tokenizer.decode(supervised) == answer + "<end_of_turn>"
    prompt = [token for token, label in zip(example.input_ids, example.labels) if label == -100]
    assert tiny_tokenizer.decode(prompt) == "<bos>" + GEMMA.prompt(question)
    assert example.input_ids.count(tiny_tokenizer.bos_token_id) == 1


def test_float16_with_gemma_is_rejected():
    with pytest.raises(ConfigError, match="float16"):
        choose_backend("auto", "float16", "auto", "gemma", cuda=True, import_unsloth=lambda: None)
    assert choose_backend("transformers", "float16", "none", "qwen2", cuda=True).dtype == "float16"


def test_float16_gemma_cli_is_one_line(tiny_model_dir, tmp_path):
    augmented = write_augmented(tmp_path / "aug", example_pairs("forget.json", 2))
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", 2))
    result = CliRunner().invoke(cli, ["train", "--base", str(tiny_model_dir), "--augmented", str(augmented),
                                      "--retain", str(retain), "--out", str(tmp_path / "o"), "--dtype", "float16"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "float16" in lines[0]
    assert "Gemma" in lines[0]


def test_non_finite_loss_stops_without_completing(tiny_model_dir, tmp_path, monkeypatch):
    from relearn_local.train import loop

    augmented = write_augmented(tmp_path / "aug", example_pairs("forget.json", 4))
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", 4))
    real_loss = loop.micro_batch_loss
    calls = {"count": 0}

    def loss_with_nan(*args, **kwargs):
        loss, sums = real_loss(*args, **kwargs)
        calls["count"] += 1
        return (loss * float("nan"), sums) if calls["count"] == 3 else (loss, sums)

    monkeypatch.setattr(loop, "micro_batch_loss", loss_with_nan)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"the loss became nan at step 3.*nothing was marked complete"):
        run_train(train_config(tiny_model_dir, out, augmented, retain, save_steps=1))
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "failed"
    assert "nan" in state["reason"]
    assert not (out / "adapter").exists()
    assert not (out / "train_summary.json").exists()
    checkpoints = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-000002"]
    assert [row["step"] for row in read_metrics(out)] == [1, 2]


@pytest.fixture(scope="module")
def multimodal_gemma_dir(tmp_path_factory, tiny_tokenizer, tiny_tokenizer_dir):
    """A tiny random Gemma3ForConditionalGeneration (model_type gemma3, text_config + SigLIP vision tower)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    torch.manual_seed(0)
    vocabulary = len(tiny_tokenizer)
    text = Gemma3TextConfig(vocab_size=vocabulary, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                            pad_token_id=tiny_tokenizer.pad_token_id)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          image_token_index=vocabulary - 1, boi_token_index=vocabulary - 2,
                          eoi_token_index=vocabulary - 3)
    model = Gemma3ForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("tiny-gemma3-multimodal")
    model.save_pretrained(str(folder))
    tiny_tokenizer.save_pretrained(str(folder))
    return folder


def test_multimodal_gemma3_trains_on_text(multimodal_gemma_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert json.loads((multimodal_gemma_dir / "config.json").read_text())["model_type"] == "gemma3"
    augmented = write_augmented(tmp_path / "aug", example_pairs("forget.json", 3))
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", 3))
    out = tmp_path / "mm"
    result = run_train(train_config(multimodal_gemma_dir, out, augmented, retain, max_steps=2))
    assert result.plan.model_class == "Gemma3ForConditionalGeneration"
    for row in read_metrics(out):
        assert math.isfinite(row["loss"])
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert weights
    assert all("language_model" in name for name in weights)
    assert not any("vision_tower" in name for name in weights)
    base = AutoModelForCausalLM.from_pretrained(str(multimodal_gemma_dir))
    PeftModel.from_pretrained(base, str(out / "adapter"))


def test_multimodal_forward_path_matches_decoder_path(multimodal_gemma_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from relearn_local.train.data import collate
    from relearn_local.train.losses import ModelView

    model = AutoModelForCausalLM.from_pretrained(str(multimodal_gemma_dir)).eval()
    records = [TrainingRecord("1", "1", pair["question"], pair["answer"]) for pair in example_pairs("forget.json", 2)]
    batch = collate(encode_records("f", records, tiny_tokenizer, GEMMA, 128).examples, tiny_tokenizer.pad_token_id)
    mask = batch["attention_mask"].bool()
    view = ModelView(model)
    assert view.uses_hidden_states
    with torch.no_grad():
        through_decoder = view.logits(view.rows(batch, mask))
        view.decoder = None
        through_forward = view.logits(view.rows(batch, mask))
    torch.testing.assert_close(through_decoder, through_forward, rtol=1e-5, atol=1e-5)


@pytest.fixture
def broken_unsloth(tmp_path, monkeypatch):
    """An installed 'unsloth' that raises at import, as the real one does on a machine without a GPU."""
    package = tmp_path / "site" / "unsloth"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise NotImplementedError("Unsloth: No NVIDIA GPU found? Unsloth currently only supports GPUs")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    return package


def test_broken_unsloth_leaves_cli_working(broken_unsloth, tiny_model_dir, tmp_path):
    augmented = write_augmented(tmp_path / "aug", example_pairs("forget.json", 2))
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", 2))
    common = ["--base", str(tiny_model_dir), "--augmented", str(augmented), "--retain", str(retain),
              "--out", str(tmp_path / "o"), "--dry-run"]
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
    assert CliRunner().invoke(cli, ["augment", "--help"]).exit_code == 0
    auto = CliRunner().invoke(cli, ["train", "--backend", "auto", *common])
    assert auto.exit_code == 0, auto.output
    assert "transformers on cpu" in auto.output
    assert "unsloth" not in sys.modules
    explicit = CliRunner().invoke(cli, ["train", "--backend", "unsloth", *common])
    assert explicit.exit_code == 2
    lines = [line for line in explicit.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "needs a CUDA GPU" in lines[0]


def test_broken_unsloth_on_gpu(broken_unsloth):
    choice = choose_backend("auto", "float32", "none", "gemma", cuda=True)
    assert choice.backend == "transformers"
    assert any("unsloth unavailable (NotImplementedError)" in reason for reason in choice.reasons)
    with pytest.raises(BackendError, match="importing unsloth failed.*No NVIDIA GPU"):
        choose_backend("unsloth", "float32", "none", "gemma", cuda=True)


def test_backend_choice_table():
    cpu = choose_backend("auto", "auto", "auto", "gemma", cuda=False)
    assert (cpu.backend, cpu.device, cpu.dtype, cpu.quantization) == ("transformers", "cpu", "float32", None)
    gpu = choose_backend("auto", "float32", "auto", "gemma", cuda=True, import_unsloth=lambda: object())
    assert (gpu.backend, gpu.quantization) == ("unsloth", "4bit")
    forced = choose_backend("transformers", "float32", "auto", "gemma", cuda=True, import_unsloth=lambda: object())
    assert (forced.backend, forced.quantization) == ("transformers", "4bit")
    with pytest.raises(ConfigError, match="4bit needs a CUDA GPU"):
        choose_backend("auto", "auto", "4bit", "gemma", cuda=False)


def test_tiny_forget_set_steps(tiny_model_dir, tmp_path):
    augmented = write_augmented(tmp_path / "aug", example_pairs("forget.json", 3), variants=1)
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", 10))
    out = tmp_path / "tiny"
    result = run_train(train_config(tiny_model_dir, out, augmented, retain, batch_size=16,
                                    gradient_accumulation=4, epochs=2))
    assert result.steps == 2
    assert result.plan.retain_used == 10
    assert [row["step"] for row in read_metrics(out)] == [1, 2]
    log = (out / "run.log").read_text()
    assert "2 optimizer steps (1 per epoch x 2 epochs" in log
    assert "10 examples, 10 used in this run" in log
