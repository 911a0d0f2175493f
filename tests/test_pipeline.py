"""``relearn-local run``: config sections, the stage chain on the tiny model, resume, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from augment_fakes import FakeOllama, start_server
from relearn_local.cli import cli
from relearn_local.errors import ConfigError, RelearnError
from relearn_local.pipeline import load_run_config, run_pipeline
from relearn_local.pipeline import stages as pipeline_stages

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write_config(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def test_config_run_section_and_stage_sections(tmp_path):
    config = write_config(tmp_path / "c.yaml", {
        "run": {"inject": True, "forget_limit": 3},
        "train": {"epochs": 1.5},
        "augment": {"rounds": 1},
    })
    resolved = load_run_config(config, {"forget": EXAMPLES / "forget.json", "retain": EXAMPLES / "retain.json",
                                        "out": tmp_path / "out"})
    assert resolved.run.inject is True
    assert resolved.run.forget_limit == 3
    assert resolved.stages["train"] == {"epochs": 1.5}
    assert resolved.stages["augment"] == {"rounds": 1}


def test_config_flags_override_file(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"forget_limit": 3, "seed": 5})
    resolved = load_run_config(config, {"forget": EXAMPLES / "forget.json", "retain": EXAMPLES / "retain.json",
                                        "out": tmp_path / "out", "forget_limit": 7})
    assert resolved.run.forget_limit == 7
    assert resolved.run.seed == 5


def test_config_rejects_pipeline_owned_key(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"train": {"out": "elsewhere"}})
    with pytest.raises(ConfigError, match="train.out is set by 'relearn-local run'"):
        load_run_config(config, {"forget": EXAMPLES / "forget.json", "retain": EXAMPLES / "retain.json",
                                 "out": tmp_path / "out"})


def test_config_needs_forget_and_retain(tmp_path):
    with pytest.raises(ConfigError, match="--forget FILE and --retain FILE"):
        load_run_config(None, {"out": tmp_path / "out"})


def test_config_rejects_bad_limit(tmp_path):
    with pytest.raises(ConfigError, match="forget_limit"):
        load_run_config(None, {"forget": EXAMPLES / "forget.json", "retain": EXAMPLES / "retain.json",
                               "out": tmp_path / "out", "forget_limit": 0})


def test_run_rejects_empty_forget_set(tmp_path):
    empty = tmp_path / "forget.json"
    empty.write_text("[]", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--forget", str(empty), "--retain", str(EXAMPLES / "retain.json"),
                                      "--out", str(tmp_path / "out"), "--ollama", "off"])
    assert result.exit_code == 2
    assert "the forget set is empty" in result.output
    assert "Traceback" not in result.output


def test_run_rejects_question_in_both_sets(tmp_path):
    forget = [{"question": "Where does Ana live?", "answer": "At 4 Elm Road."},
              {"question": "What is Ana's email?", "answer": "ana@example.invalid"}]
    retain = [{"question": "What does Ana write?", "answer": "Poems."},
              {"question": "Where does Ana live?", "answer": "In a town."}]
    (tmp_path / "forget.json").write_text(json.dumps(forget), encoding="utf-8")
    (tmp_path / "retain.json").write_text(json.dumps(retain), encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--forget", str(tmp_path / "forget.json"),
                                      "--retain", str(tmp_path / "retain.json"),
                                      "--out", str(tmp_path / "out"), "--ollama", "off"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "forget record 1 = retain record 2" in message
    assert "1 question is in both the forget and the retain set" in message
    assert "Traceback" not in result.output
    log = (tmp_path / "out" / "run.log").read_text(encoding="utf-8")
    assert "relearn-local run failed: ConfigError" in log


@pytest.fixture
def fake_ollama():
    server = start_server()
    try:
        yield FakeOllama(server)
    finally:
        server.clear()
        server.stop()


def tiny_run_config(tmp_path: Path, tiny_model_dir: Path, host: str) -> Path:
    """A run on the tiny model: 3 forget and 3 retain items, augment through a fake Ollama, tiny budgets."""
    return write_config(tmp_path / "run.yaml", {
        "run": {"inject": True, "forget_limit": 3, "retain_limit": 3, "ollama": "off", "examples_in_report": 2},
        "inject": {"epochs": 1, "batch_size": 4},
        "augment": {"backend": "ollama", "ollama_host": host, "model": "llama3", "rounds": 1, "timeout": 10},
        "train": {"epochs": 1, "batch_size": 4, "min_forget_coverage": 0.0},
        "export": {"quant": "f16", "offline": True, "parity_questions": 1},
        "evaluate": {"max_new_tokens": 8, "reference_model": str(tiny_model_dir), "batch_size": 4},
    })


def test_pipeline_stops_then_resumes_and_reports(tmp_path, tiny_model_dir, fake_ollama, monkeypatch):
    from relearn_local.errors import ExportError
    from relearn_local.export.convert import locate_converter

    try:
        locate_converter(offline=True)
    except ExportError as exc:
        pytest.skip(f"no local llama.cpp converter: {exc}")

    config = tiny_run_config(tmp_path, tiny_model_dir, fake_ollama.host)
    overrides = {"forget": EXAMPLES / "forget.json", "retain": EXAMPLES / "retain.json",
                 "out": tmp_path / "run", "base": str(tiny_model_dir)}

    def failing_export(context, stage_dir):
        raise RelearnError("export failed on purpose")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline_stages, "_export", failing_export)
        with pytest.raises(RelearnError, match="on purpose"):
            run_pipeline(load_run_config(config, overrides))
    state = json.loads((tmp_path / "run" / "state.json").read_text(encoding="utf-8"))
    assert state["status"] == "failed"
    assert not (tmp_path / "run" / "report.md").exists()
    chat_requests = len(fake_ollama.chat_bodies)
    assert chat_requests > 0

    result = run_pipeline(load_run_config(config, overrides))

    statuses = {record.name: record.status for record in result.stages}
    assert statuses == {"inject": "reused", "eval-before": "reused", "augment": "reused", "train": "reused",
                        "export": "ran", "eval-after": "ran"}
    assert len(fake_ollama.chat_bodies) == chat_requests
    train_record = next(record for record in result.stages if record.name == "train")
    assert train_record.seconds > 0
    assert train_record.peak_rss_mb is not None
    assert result.gguf is not None and result.gguf.exists()
    assert result.modelfile is not None and result.modelfile.exists()
    assert result.before is not None and result.after is not None
    for key in ("KFR", "KRR"):
        assert 0.0 <= result.after[key] <= 1.0
    report = result.report.read_text(encoding="utf-8")
    assert "| KFR (forget set) |" in report
    assert "s (earlier run) |" in report
    assert "ollama create" in report
    assert "ollama run" in report
    assert "![Loss curve](loss_curve.png)" in report
    assert (tmp_path / "run" / "metrics_before_after.png").exists()
    assert (tmp_path / "run" / "loss_curve.png").exists()
    assert report.count("**Q:**") == 4
    used = json.loads((tmp_path / "run" / "data" / "forget.json").read_text(encoding="utf-8"))
    assert len(used) == 3
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["inputs"]["forget"]["sha256"]

    again = CliRunner().invoke(cli, ["run", "--config", str(config), "--forget", str(EXAMPLES / "forget.json"),
                                     "--retain", str(EXAMPLES / "retain.json"), "--out", str(tmp_path / "run"),
                                     "--base", str(tiny_model_dir)])
    assert again.exit_code == 2
    assert "--force" in again.output


def test_pipeline_refuses_changed_inputs_on_resume(tmp_path, tiny_model_dir, monkeypatch):
    overrides = {"forget": EXAMPLES / "forget.json", "retain": EXAMPLES / "retain.json",
                 "out": tmp_path / "run", "base": str(tiny_model_dir), "ollama": "off", "forget_limit": 2}

    def stop(context, stage_dir):
        raise RelearnError("stopped on purpose")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline_stages, "_evaluate_before", stop)
        with pytest.raises(RelearnError):
            run_pipeline(load_run_config(None, overrides))
    with pytest.raises(ConfigError, match="differs from the one this run"):
        run_pipeline(load_run_config(None, {**overrides, "forget_limit": 3}))


def test_report_failed_parity_warns():
    from types import SimpleNamespace

    from relearn_local.pipeline.report import _serving_lines

    result = SimpleNamespace(gguf="out/m-q8_0.gguf", modelfile="out/Modelfile", ollama_created=False,
                             create_command="ollama create m -f out/Modelfile", run_command="ollama run m")
    attempts = [{"quant": "q4_k_m", "passed": False}, {"quant": "q6_k", "passed": True}]
    passed = {"quant": "q6_k", "quant_attempts": attempts,
              "parity": {"passed": True, "skipped": None, "verdict": "passed (q6_k: ...)"}}
    text = "\n".join(_serving_lines(result, passed))
    assert "Output type: q6_k, the first that passed of those tried (q4_k_m failed, q6_k passed)" in text
    assert "ollama create m" in text
    assert "Do not serve" not in text

    failed = {"quant": "q8_0", "parity": {"passed": False, "skipped": None, "verdict": "FAILED (q8_0: ...)"}}
    text = "\n".join(_serving_lines(result, failed))
    assert "Do not serve this GGUF" in text
    assert "ollama create" not in text
    assert "ollama run" not in text
