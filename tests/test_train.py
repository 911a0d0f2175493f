"""The train stage end to end on the tiny model: outputs, weights, methods, resume, interruption, CLI."""

from __future__ import annotations

import json
import logging
import math
import os
import signal

import pytest
import torch
from click.testing import CliRunner

from relearn_local.cli import cli
from relearn_local.errors import RunFolderError, TrainingError
from relearn_local.train.loop import TrainingInterrupted
from relearn_local.train.stage import run_train, train_inputs

from train_support import read_metrics, standard_inputs, train_config, write_augmented, example_pairs


@pytest.fixture
def inputs(tmp_path):
    return standard_inputs(tmp_path)


def test_train_writes_adapter_metrics_and_curve(tiny_model_dir, tmp_path, inputs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    forget, augmented, retain = inputs
    out = tmp_path / "run"
    events = []
    result = run_train(train_config(tiny_model_dir, out, augmented, retain, max_steps=2), progress=events.append)
    assert result.steps == 2
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").exists()
    recorded = json.loads((adapter / "relearn_base.json").read_text())
    assert recorded["base"] == str(tiny_model_dir)
    assert recorded["family"] == "gemma"
    assert recorded["hf_path"] == str(tiny_model_dir.resolve())
    assert recorded["digest"]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_B" in name for name, _ in loaded.named_parameters())
    assert json.loads((out / "state.json").read_text())["status"] == "complete"
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.yaml").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {"augmented", "retain"}
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["final"]["step"] == 2

    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("epoch", "forget_ce", "retain_ce", "kl", "loss", "lr", "tokens_per_second"):
            assert row[key] is not None, key
            assert math.isfinite(row[key]), key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    train_events = [event for event in events if event.task == "train" and not event.done]
    assert {"forget_ce", "retain_ce", "kl", "lr", "tok/s"} <= set(train_events[-1].metrics)


def _train_in_memory(tiny_model_dir, tmp_path, inputs, steps, **overrides):
    """Plan and set up a run, then train ``steps`` steps; return the model before and after."""
    from relearn_local.train.loop import LoopContext, run_loop
    from relearn_local.train.session import plan_session, set_up_model

    _, augmented, retain = inputs
    config = train_config(tiny_model_dir, tmp_path / "mem", augmented, retain, max_steps=steps, **overrides)
    session = plan_session(config, train_inputs(config))
    trained = set_up_model(session)
    before = {name: parameter.detach().clone() for name, parameter in trained.model.named_parameters()}
    (tmp_path / "mem").mkdir()
    context = LoopContext(
        trained.model, trained.view, trained.reference, session.inputs.objective, trained.optimizer,
        trained.scheduler, session.training.examples, session.retain.examples, trained.pad_id, trained.device,
        session.schedule, session.last_step, 1.0, tmp_path / "mem", 1000, 1, "test",
    )
    run_loop(context, 0)
    return trained.model, before


@pytest.mark.parametrize("checkpointing", [False, True])
def test_adapter_changes_and_base_does_not(tiny_model_dir, tmp_path, inputs, checkpointing):
    model, before = _train_in_memory(tiny_model_dir, tmp_path, inputs, 3, gradient_checkpointing=checkpointing)
    lora = [name for name in before if "lora_" in name]
    assert lora
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            assert parameter.requires_grad, name
            assert not torch.allclose(parameter.detach(), before[name], rtol=1e-4, atol=0), f"{name} did not change"
        else:
            assert not parameter.requires_grad, name
            assert torch.equal(parameter.detach(), before[name]), f"base weight {name} changed"


@pytest.mark.parametrize("method,extra", [
    ("ga", {}), ("gd", {}), ("npo", {}), ("npo", {"npo_retain": "kl"}), ("relearn", {"kl_positions": "answer"}),
])
def test_every_method_runs_two_finite_steps(tiny_model_dir, tmp_path, inputs, method, extra):
    forget, augmented, retain = inputs
    out = tmp_path / f"{method}"
    config = train_config(tiny_model_dir, out, augmented if method == "relearn" else None, retain,
                          method=method, forget=forget if method != "relearn" else None, max_steps=2, **extra)
    result = run_train(config)
    rows = read_metrics(out)
    assert result.steps == 2
    for row in rows:
        assert math.isfinite(row["loss"])
        assert math.isfinite(row["forget_ce"])
    if method in ("gd", "npo") and extra.get("npo_retain") != "kl":
        assert all(row["retain_ce"] is not None for row in rows)
    if method == "npo":
        assert rows[0]["npo"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)
    if method == "ga":
        assert rows[0]["loss"] == pytest.approx(-rows[0]["forget_ce"], rel=1e-5)
        assert rows[0]["retain_ce"] is None


def test_baselines_train_on_original_forget_set(tiny_model_dir, tmp_path, inputs):
    forget, augmented, retain = inputs
    config = train_config(tiny_model_dir, tmp_path / "x", augmented, retain, method="gd", forget=forget)
    session_inputs = train_inputs(config)
    originals = example_pairs("forget.json", 4)
    assert [record.answer for record in session_inputs.training_records] == [pair["answer"] for pair in originals]
    relearn = train_inputs(train_config(tiny_model_dir, tmp_path / "y", augmented, retain))
    assert all("can't share" in record.answer for record in relearn.training_records)


def test_resume_reproduces_uninterrupted_run(tiny_model_dir, tmp_path, inputs):
    _, augmented, retain = inputs
    full = tmp_path / "full"
    run_train(train_config(tiny_model_dir, full, augmented, retain, epochs=1.5, lora_dropout=0.1))
    expected = read_metrics(full)
    assert len(expected) == 6

    cut = tmp_path / "cut"
    config = train_config(tiny_model_dir, cut, augmented, retain, epochs=1.5, lora_dropout=0.1)

    def stop_after_three(event):
        if event.task == "train" and event.completed == 3 and not event.done:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as interrupted:
        run_train(config, progress=stop_after_three)
    assert interrupted.value.step == 3
    assert interrupted.value.checkpoint.name == "step-000003"
    assert json.loads((cut / "state.json").read_text())["status"] == "failed"
    assert not (cut / "adapter").exists()

    with pytest.raises(RunFolderError, match="--resume"):
        run_train(config)
    resumed = run_train(train_config(tiny_model_dir, cut, augmented, retain, epochs=1.5, lora_dropout=0.1,
                                     resume=True))
    assert resumed.resumed_from_step == 3
    rows = read_metrics(cut)
    assert [row["step"] for row in rows] == list(range(1, 7))
    for got, want in zip(rows[3:], expected[3:]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-9)
        assert got["kl"] == pytest.approx(want["kl"], rel=1e-5, abs=1e-9)


def test_sigint_saves_checkpoint_then_stops(tiny_model_dir, tmp_path, inputs):
    _, augmented, retain = inputs
    out = tmp_path / "sig"

    def interrupt_after_two(event):
        if event.task == "train" and event.completed == 2 and not event.done:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as interrupted:
        run_train(train_config(tiny_model_dir, out, augmented, retain), progress=interrupt_after_two)
    assert interrupted.value.step == 2
    assert (out / "checkpoints" / "step-000002" / "adapter_model.safetensors").exists()
    assert len(read_metrics(out)) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_rejects_changed_settings(tiny_model_dir, tmp_path, inputs):
    _, augmented, retain = inputs
    out = tmp_path / "changed"

    def stop_early(event):
        if event.task == "train" and event.completed == 1 and not event.done:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        run_train(train_config(tiny_model_dir, out, augmented, retain), progress=stop_early)
    with pytest.raises(RunFolderError, match="other settings"):
        run_train(train_config(tiny_model_dir, out, augmented, retain, learning_rate=5e-4, resume=True))


def test_finished_run_is_not_overwritten(tiny_model_dir, tmp_path, inputs):
    _, augmented, retain = inputs
    out = tmp_path / "done"
    run_train(train_config(tiny_model_dir, out, augmented, retain, max_steps=1))
    with pytest.raises(RunFolderError, match="--force"):
        run_train(train_config(tiny_model_dir, out, augmented, retain, max_steps=1))
    with pytest.raises(RunFolderError, match="nothing to resume"):
        run_train(train_config(tiny_model_dir, out, augmented, retain, max_steps=1, resume=True))
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_dry_run_writes_nothing(tiny_model_dir, tmp_path, inputs):
    _, augmented, retain = inputs
    out = tmp_path / "dry"
    result = run_train(train_config(tiny_model_dir, out, augmented, retain, dry_run=True))
    assert result.dry_run
    assert not out.exists()
    plan = result.plan
    assert plan.training_examples == 8
    assert plan.retain_examples == 6
    assert plan.total_steps == 4
    assert plan.backend == "transformers"
    assert plan.dtype == "float32"
    assert plan.trainable_parameters > 0
    labels = [label for label, _ in plan.rows()]
    for expected in ("base model", "backend", "augmented forget set", "retain set", "steps", "adapter",
                     "trainable parameters", "output folder"):
        assert expected in labels


def test_low_forget_coverage_is_rejected(tiny_model_dir, tmp_path):
    pairs = example_pairs("forget.json", 3)
    augmented = write_augmented(tmp_path / "aug", pairs, items=10)
    retain = tmp_path / "retain.json"
    retain.write_text(json.dumps(example_pairs("retain.json", 3)))
    with pytest.raises(TrainingError, match=r"only 3 of 10 forget items \(30%\).*--min-forget-coverage"):
        run_train(train_config(tiny_model_dir, tmp_path / "out", augmented, retain, dry_run=True))
    lowered = train_config(tiny_model_dir, tmp_path / "out", augmented, retain, dry_run=True,
                           min_forget_coverage=0.2)
    assert run_train(lowered).plan.training_items == 3


def test_incomplete_augmentation_warns(tiny_model_dir, tmp_path, caplog):
    pairs = example_pairs("forget.json", 4)
    augmented = write_augmented(tmp_path / "aug", pairs, items=5)
    retain = tmp_path / "retain.json"
    retain.write_text(json.dumps(example_pairs("retain.json", 3)))
    with caplog.at_level(logging.WARNING, logger="relearn_local"):
        run_train(train_config(tiny_model_dir, tmp_path / "out", augmented, retain, dry_run=True))
    assert "augmentation was incomplete: 4 of 5 forget items (80%)" in caplog.text
    assert "failed: 5" in caplog.text


def test_cli_train_runs_and_renders(tiny_model_dir, tmp_path, inputs):
    _, augmented, retain = inputs
    out = tmp_path / "cli"
    arguments = ["train", "--base", str(tiny_model_dir), "--augmented", str(augmented), "--retain", str(retain),
                 "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--max-length", "128",
                 "--lora-rank", "4", "--epochs", "1"]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "train plan" in result.output
    assert "train finished" in result.output
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    config_text = (out / "config.yaml").read_text()
    assert "lora_rank: 4" in config_text
    assert "kl_weight: 1.0" in config_text


def test_cli_config_file_and_flag_precedence(tiny_model_dir, tmp_path, inputs):
    _, augmented, retain = inputs
    config_file = tmp_path / "train.yaml"
    config_file.write_text("train:\n  lora_rank: 2\n  batch_size: 3\n  max_length: 96\n")
    arguments = ["train", "--config", str(config_file), "--base", str(tiny_model_dir), "--augmented", str(augmented),
                 "--retain", str(retain), "--out", str(tmp_path / "o"), "--batch-size", "1", "--dry-run"]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "LoRA rank 2" in result.output
    assert "1 x 1 accumulation" in result.output


def test_cli_missing_training_set_is_one_line(tiny_model_dir, tmp_path, inputs):
    _, _, retain = inputs
    result = CliRunner().invoke(cli, ["train", "--base", str(tiny_model_dir), "--retain", str(retain),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "--augmented" in lines[0]


def test_cli_interrupt_exits_130_with_hint(tiny_model_dir, tmp_path, inputs, monkeypatch):
    from relearn_local.train import loop

    def interrupted(context, start_step):
        raise TrainingInterrupted(3, tmp_path / "checkpoints" / "step-000003")

    monkeypatch.setattr(loop, "run_loop", interrupted)
    _, augmented, retain = inputs
    result = CliRunner().invoke(cli, ["train", "--base", str(tiny_model_dir), "--augmented", str(augmented),
                                      "--retain", str(retain), "--out", str(tmp_path / "o"), "--lora-rank", "2"])
    assert result.exit_code == 130
    assert "interrupted after step 3" in result.output
    assert "--resume" in result.output
