"""Typed configs (default < file < flag) and run folders (state, manifest, atomic writes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal, Optional

import pytest

from relearn_local.config import build_config, config_to_yaml, option
from relearn_local.errors import ConfigError, RunFolderError
from relearn_local.runs import RunFolder, atomic_write_text, sha256_path


@dataclasses.dataclass
class SampleConfig:
    rank: int = option(32, "LoRA rank.", paper=True)
    learning_rate: float = option(1e-4, "Peak learning rate.")
    backend: Literal["auto", "cpu"] = option("auto", "Backend.")
    out: Optional[Path] = option(None, "Output folder.")
    tags: list[str] = option([], "Tags.")


def test_defaults_file_flags_precedence(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("rank: 8\nlearning_rate: 0.5\n")
    config = build_config(SampleConfig, config_file, {"learning_rate": 0.25})
    assert config.rank == 8
    assert config.learning_rate == 0.25
    assert config.backend == "auto"


def test_stage_section_in_file(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  rank: 4\naugment:\n  rounds: 2\n")
    assert build_config(SampleConfig, config_file, section="train").rank == 4


def test_file_with_other_sections_only(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("augment:\n  rounds: 2\n")
    assert build_config(SampleConfig, config_file, section="train").rank == 32


def test_unknown_key_rejected(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("rnak: 8\n")
    with pytest.raises(ConfigError, match="rnak"):
        build_config(SampleConfig, config_file)


def test_bad_type_rejected():
    with pytest.raises(ConfigError, match="rank"):
        build_config(SampleConfig, None, {"rank": "many"})


def test_literal_checked():
    with pytest.raises(ConfigError, match="choose one of"):
        build_config(SampleConfig, None, {"backend": "gpu9"})


def test_malformed_yaml(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("rank: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        build_config(SampleConfig, config_file)


def test_yaml_round_trip(tmp_path):
    config = build_config(SampleConfig, None, {"rank": 4, "out": tmp_path})
    text = config_to_yaml(config)
    assert "# LoRA rank. (ReLearn paper default)" in text
    saved = tmp_path / "resolved.yaml"
    saved.write_text(text)
    assert build_config(SampleConfig, saved) == config


def test_run_folder_refuses_finished_run(tmp_path):
    folder = RunFolder(tmp_path / "run", "train")
    folder.prepare()
    folder.mark_complete()
    with pytest.raises(RunFolderError, match="--force"):
        RunFolder(tmp_path / "run", "train").prepare()
    assert RunFolder(tmp_path / "run", "train").prepare(force=True) is False


def test_run_folder_resumes_unfinished(tmp_path):
    RunFolder(tmp_path / "run", "augment").prepare()
    assert RunFolder(tmp_path / "run", "augment").prepare() is True


def test_run_folder_rejects_other_stage(tmp_path):
    RunFolder(tmp_path / "run", "augment").prepare()
    with pytest.raises(RunFolderError, match="'augment' run"):
        RunFolder(tmp_path / "run", "train").prepare()


def test_run_folder_rejects_unrelated_files(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty"):
        RunFolder(tmp_path / "run", "train").prepare()
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_failure_marks_state(tmp_path):
    folder = RunFolder(tmp_path / "run", "train")
    with pytest.raises(RuntimeError):
        with folder:
            folder.prepare()
            raise RuntimeError("boom")
    assert folder.read_state()["status"] == "failed"
    assert "boom" in folder.read_state()["reason"]


def test_failure_written_to_run_log(tmp_path, capsys):
    folder = RunFolder(tmp_path / "run", "export")
    with pytest.raises(RuntimeError):
        with folder:
            folder.prepare()
            folder.attach_log()
            raise RuntimeError("converter exploded")
    log = (tmp_path / "run" / "run.log").read_text(encoding="utf-8")
    assert "relearn-local export failed: RuntimeError: converter exploded" in log
    assert "Traceback" in log
    assert "converter exploded" not in capsys.readouterr().err


def test_interrupt_written_to_run_log(tmp_path):
    folder = RunFolder(tmp_path / "run", "train")
    with pytest.raises(KeyboardInterrupt):
        with folder:
            folder.prepare()
            folder.attach_log()
            raise KeyboardInterrupt
    log = (tmp_path / "run" / "run.log").read_text(encoding="utf-8")
    assert "relearn-local train failed: interrupted" in log
    assert "Traceback" not in log


def test_finished_run_message_names_command(tmp_path):
    folder = RunFolder(tmp_path / "run", "run")
    folder.prepare()
    folder.mark_complete()
    with pytest.raises(RunFolderError) as caught:
        RunFolder(tmp_path / "run", "run").prepare()
    assert "finished output of 'relearn-local run'" in str(caught.value)
    assert "run run" not in str(caught.value)


def test_manifest_hashes_inputs(tmp_path):
    data = tmp_path / "forget.json"
    data.write_text("[]")
    folder = RunFolder(tmp_path / "run", "augment")
    folder.prepare()
    manifest = folder.write_manifest({"forget": data}, {"spec": "tiny"})
    saved = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert saved["inputs"]["forget"]["sha256"] == sha256_path(data)
    assert saved["packages"]["relearn-local"]
    assert manifest["base_model"] == {"spec": "tiny"}


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert [path.name for path in tmp_path.iterdir()] == ["a.txt"]
