"""Loss terms and batching on the tiny model: CE on answers only, KL to the reference on real tokens, NPO, schedules."""

from __future__ import annotations

import math
import random

import pytest
import torch

from relearn_local.chat_formats import get_chat_format
from relearn_local.train.backends import BackendChoice, LoraSettings, load_for_training
from relearn_local.train.data import (Example, build_schedule, collate, encode_records, length_grouped_batches,
                                      retain_coverage, TrainingRecord)
from relearn_local.train.losses import (ModelView, Objective, StepCounts, add_counts, batch_counts,
                                        micro_batch_loss, shifted_targets, token_terms)
from relearn_local.train.reference import AdapterOffReference, FrozenCopyReference

from train_support import example_pairs

GEMMA = get_chat_format("gemma")
CPU = BackendChoice("transformers", "cpu", "float32", None)


@pytest.fixture
def lora_model(tiny_model_dir):
    loaded = load_for_training(tiny_model_dir, CPU, LoraSettings(4, 8, 0.0, False, 128, 0))
    return loaded.model, loaded.tokenizer


def encode_pairs(tokenizer, pairs, max_length=128):
    records = [TrainingRecord(str(i), str(i), pair["question"], pair["answer"]) for i, pair in enumerate(pairs)]
    return encode_records("test", records, tokenizer, GEMMA, max_length).examples


def perturb_adapter(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def pad_to(batch, width, pad_id):
    extra = width - batch["input_ids"].shape[1]
    return {
        "input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_id),
        "labels": torch.nn.functional.pad(batch["labels"], (0, extra), value=-100),
        "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0),
    }


def step_loss(objective, view, reference, forget, retain):
    totals = StepCounts()
    add_counts(totals, batch_counts(objective, forget, retain))
    return micro_batch_loss(objective, view, reference, forget, retain, totals)


def test_answer_ce_matches_model_forward(lora_model):
    model, tokenizer = lora_model
    perturb_adapter(model)
    batch = collate(encode_pairs(tokenizer, example_pairs("forget.json", 3)), tokenizer.pad_token_id)
    view = ModelView(model)
    loss, sums = step_loss(Objective("ce"), view, None, batch, None)
    with torch.no_grad():
        reference_loss = model(**batch).loss
    torch.testing.assert_close(loss.detach(), reference_loss, rtol=1e-5, atol=1e-6)


def test_ce_counts_answer_tokens_only(lora_model):
    model, tokenizer = lora_model
    examples = encode_pairs(tokenizer, example_pairs("forget.json", 2))
    batch = collate(examples, tokenizer.pad_token_id)
    supervised = int((shifted_targets(batch) != -100).sum())
    answer_tokens = [len(tokenizer(pair["answer"] + "<end_of_turn>", add_special_tokens=False)["input_ids"])
                     for pair in example_pairs("forget.json", 2)]
    assert supervised == sum(answer_tokens)
    assert [example.supervised for example in examples] == answer_tokens


def test_kl_is_zero_at_first_step(lora_model):
    model, tokenizer = lora_model
    view = ModelView(model)
    retain = collate(encode_pairs(tokenizer, example_pairs("retain.json", 3)), tokenizer.pad_token_id)
    forget = collate(encode_pairs(tokenizer, example_pairs("forget.json", 3)), tokenizer.pad_token_id)
    model.train()
    _, sums = step_loss(Objective("ce", 1.0, 1.0, 1.0), view, AdapterOffReference(model, view), forget, retain)
    assert sums.kl == pytest.approx(0.0, abs=1e-6)
    assert sums.retain_nll > 0


@pytest.mark.parametrize("positions", ["all", "answer"])
def test_kl_same_under_two_padding_lengths(lora_model, positions):
    model, tokenizer = lora_model
    perturb_adapter(model)
    view = ModelView(model)
    reference = AdapterOffReference(model, view)
    retain = collate(encode_pairs(tokenizer, example_pairs("retain.json", 3)), tokenizer.pad_token_id)
    forget = collate(encode_pairs(tokenizer, example_pairs("forget.json", 2)), tokenizer.pad_token_id)
    model.eval()
    objective = Objective("ce", 1.0, 1.0, 1.0, positions)
    short_loss, short = step_loss(objective, view, reference, forget, retain)
    width = retain["input_ids"].shape[1] + 37
    long_loss, long = step_loss(objective, view, reference, forget, pad_to(retain, width, tokenizer.pad_token_id))
    assert short.kl > 0
    short_counts = batch_counts(objective, forget, retain)
    long_counts = batch_counts(objective, forget, pad_to(retain, width, tokenizer.pad_token_id))
    assert short_counts.kl_positions == long_counts.kl_positions
    assert long.kl / long_counts.kl_positions == pytest.approx(short.kl / short_counts.kl_positions, rel=1e-5)
    torch.testing.assert_close(long_loss, short_loss, rtol=1e-5, atol=1e-6)


def test_kl_matches_direct_computation(lora_model):
    model, tokenizer = lora_model
    perturb_adapter(model)
    view = ModelView(model)
    retain = collate(encode_pairs(tokenizer, example_pairs("retain.json", 2)), tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        model_log_probs = torch.log_softmax(model(**retain).logits, -1)
        with model.disable_adapter():
            reference_log_probs = torch.log_softmax(model(**retain).logits, -1)
    per_position = (reference_log_probs.exp() * (reference_log_probs - model_log_probs)).sum(-1)
    mask = retain["attention_mask"].bool()
    expected = per_position[mask].mean()
    objective = Objective("ce", 0.0, 0.0, 1.0, "all")
    forget = collate(encode_pairs(tokenizer, example_pairs("forget.json", 1)), tokenizer.pad_token_id)
    _, sums = step_loss(objective, view, AdapterOffReference(model, view), forget, retain)
    assert sums.kl / int(mask.sum()) == pytest.approx(float(expected), rel=1e-4)


def test_frozen_copy_reference_matches_adapter_off(lora_model, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model, tokenizer = lora_model
    perturb_adapter(model)
    view = ModelView(model)
    model.eval()
    copy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    retain = collate(encode_pairs(tokenizer, example_pairs("retain.json", 2)), tokenizer.pad_token_id)
    forget = collate(encode_pairs(tokenizer, example_pairs("forget.json", 1)), tokenizer.pad_token_id)
    objective = Objective("ce", 1.0, 1.0, 1.0)
    _, adapter_off = step_loss(objective, view, AdapterOffReference(model, view), forget, retain)
    _, frozen_copy = step_loss(objective, view, FrozenCopyReference(copy), forget, retain)
    assert frozen_copy.kl == pytest.approx(adapter_off.kl, rel=1e-5)


def test_npo_starts_at_two_over_beta_log_two(lora_model):
    model, tokenizer = lora_model
    view = ModelView(model)
    forget = collate(encode_pairs(tokenizer, example_pairs("forget.json", 3)), tokenizer.pad_token_id)
    model.eval()
    objective = Objective("npo", npo_beta=0.1)
    loss, sums = step_loss(objective, view, AdapterOffReference(model, view), forget, None)
    assert float(loss.detach()) == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)


def test_gradient_ascent_is_negated_ce(lora_model):
    model, tokenizer = lora_model
    view = ModelView(model)
    forget = collate(encode_pairs(tokenizer, example_pairs("forget.json", 2)), tokenizer.pad_token_id)
    model.eval()
    ascent, _ = step_loss(Objective("ascent"), view, None, forget, None)
    descent, _ = step_loss(Objective("ce"), view, None, forget, None)
    torch.testing.assert_close(ascent, -descent)


def test_chunked_terms_equal_single_pass(lora_model, monkeypatch):
    model, tokenizer = lora_model
    perturb_adapter(model)
    view = ModelView(model)
    batch = collate(encode_pairs(tokenizer, example_pairs("retain.json", 3)), tokenizer.pad_token_id)
    mask = batch["attention_mask"].bool()
    rows = view.rows(batch, mask)
    targets = shifted_targets(batch)[mask]
    with torch.no_grad(), model.disable_adapter():
        reference_rows = view.rows(batch, mask)
    whole_nll, whole_kl = token_terms(view, rows, targets, (view, reference_rows))
    monkeypatch.setattr("relearn_local.train.losses.CHUNK_ELEMENTS", view.vocab_size * 7)
    assert view.chunk_rows == 7
    chunked_nll, chunked_kl = token_terms(view, rows, targets, (view, reference_rows))
    torch.testing.assert_close(chunked_nll, whole_nll)
    torch.testing.assert_close(chunked_kl, whole_kl)
    chunked_nll.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


def test_softcapped_head_matches_forward(tiny_tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=5.0,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    model = Gemma3ForCausalLM(config).eval()
    batch = collate(encode_pairs(tiny_tokenizer, example_pairs("forget.json", 2)), tiny_tokenizer.pad_token_id)
    view = ModelView(model)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = model(**batch).logits[mask]
        actual = view.logits(view.rows(batch, mask))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert float(expected.abs().max()) <= 5.0


def test_collate_pads_right_to_longest():
    examples = [Example([2, 5, 6, 7], [-100, -100, 6, 7], "a"), Example([2, 9], [-100, 9], "b")]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 7], [2, 9, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7], [-100, 9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_length_grouping_pads_less_than_random_batches():
    rng = random.Random(3)
    lengths = [rng.randint(10, 400) for _ in range(400)]
    grouped = length_grouped_batches(lengths, 8, random.Random(0))
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    plain = [order[start:start + 8] for start in range(0, len(order), 8)]

    def padding(batches):
        return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)

    assert sorted(i for batch in grouped for i in batch) == list(range(400))
    assert padding(grouped) < padding(plain) / 4


def test_schedule_covers_forget_set_each_epoch():
    steps = build_schedule([5, 9, 3, 7, 11, 4, 8], [6, 6, 6], 2, 2, 3, 0)
    for epoch in range(3):
        indices = [i for step in steps if step.epoch == epoch for batch in step.micro_batches for i in batch.forget]
        assert sorted(indices) == list(range(7))
    assert len(steps) == 3 * 2


def test_schedule_fractional_epochs():
    steps = build_schedule([5] * 8, [], 2, 1, 1.5, 0)
    assert len(steps) == 4 + 2
    assert [step.epoch for step in steps] == [0, 0, 0, 0, 1, 1]


def test_schedule_cycles_whole_retain_set():
    retain_lengths = list(range(10, 40))
    steps = build_schedule([8] * 12, retain_lengths, 2, 1, 5, 0)
    seen = [i for step in steps for batch in step.micro_batches for i in batch.retain]
    assert len(seen) == 5 * 6 * 2
    first_pass = seen[:30]
    assert sorted(first_pass) == list(range(30))
    assert retain_coverage(steps, 30) == 30


def test_tiny_forget_set_still_steps():
    # 3 forget items, 10 retain items, batch 16, gradient accumulation 4, 2 epochs.
    steps = build_schedule([20, 30, 25], [15] * 10, 16, 4, 2, 0)
    assert len(steps) == 2
    assert all(len(step.micro_batches) == 1 for step in steps)
    assert sorted(steps[0].micro_batches[0].forget) == [0, 1, 2]
    assert retain_coverage(steps, 10) == 10


def test_schedule_is_deterministic_per_seed():
    lengths = [random.Random(1).randint(5, 50) for _ in range(30)]
    first = build_schedule(lengths, lengths, 4, 2, 2, 7)
    again = build_schedule(lengths, lengths, 4, 2, 2, 7)
    other = build_schedule(lengths, lengths, 4, 2, 2, 8)
    assert [[b.forget for b in s.micro_batches] for s in first] == [[b.forget for b in s.micro_batches] for s in again]
    assert [[b.forget for b in s.micro_batches] for s in first] != [[b.forget for b in s.micro_batches] for s in other]


def test_joined_pass_equals_separate_passes(lora_model, monkeypatch):
    model, tokenizer = lora_model
    perturb_adapter(model)
    view = ModelView(model)
    reference = AdapterOffReference(model, view)
    forget = collate(encode_pairs(tokenizer, example_pairs("forget.json", 2)), tokenizer.pad_token_id)
    retain = collate(encode_pairs(tokenizer, example_pairs("retain.json", 3)), tokenizer.pad_token_id)
    model.eval()
    objective = Objective("ce", 1.0, 1.0, 1.0)
    monkeypatch.setattr("relearn_local.train.losses.JOIN_PADDING_LIMIT", -1.0)
    separate_loss, separate = step_loss(objective, view, reference, forget, retain)
    monkeypatch.setattr("relearn_local.train.losses.JOIN_PADDING_LIMIT", 100.0)
    joined_loss, joined = step_loss(objective, view, reference, forget, retain)
    torch.testing.assert_close(joined_loss, separate_loss, rtol=1e-5, atol=1e-6)
    assert joined.kl == pytest.approx(separate.kl, rel=1e-4)
    assert joined.retain_nll == pytest.approx(separate.retain_nll, rel=1e-5)
