"""``relearn-local export`` options: choices in step with the stage tables, one-line errors, dry run, config file."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from export_support import FORGET, converter, export_base_dir, tiny_adapter  # noqa: F401
from relearn_local.cli import cli
from relearn_local.cli import export_cmd
from relearn_local.export import MERGE_DTYPES, MODES, QUANT_TYPES, ExportConfig
from relearn_local.export.config import AUTO_QUANT


def invoke(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_choices_match_stage_tables():
    assert export_cmd.QUANT_CHOICES == (AUTO_QUANT, *QUANT_TYPES)
    assert export_cmd.MODE_CHOICES == tuple(MODES)
    assert export_cmd.MERGE_DTYPE_CHOICES == tuple(MERGE_DTYPES)


def test_every_config_field_has_an_option():
    fields = {field.name for field in dataclasses.fields(ExportConfig)}
    assert set(export_cmd.OPTION_FIELDS.values()) == fields
    parameters = {parameter.name for parameter in export_cmd.export_command.params}
    assert set(export_cmd.OPTION_FIELDS) <= parameters


def test_adapter_folder_without_adapter(tmp_path):
    result = invoke("--adapter", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "no adapter_config.json" in one_line_error(result)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "bad name!"], "not a valid Ollama model name"),
        (["--parity-questions", "-1"], "parity_questions"),
        (["--top-p", "1.5"], "top_p"),
        (["--num-ctx", "10"], "num_ctx"),
    ],
)
def test_invalid_values(tmp_path, tiny_adapter, args, message):
    result = invoke("--adapter", str(tiny_adapter), "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert message in one_line_error(result)


def test_gemma_system_prompt_rejected_before_merge(tmp_path, tiny_adapter, converter, monkeypatch):
    monkeypatch.setattr("relearn_local.export.stage.merge_adapter", _merge_must_not_run)
    result = invoke("--adapter", str(tiny_adapter), "--out", str(tmp_path / "out"), "--system", "Be brief.",
                    "--offline", "--forget", str(FORGET))
    assert result.exit_code == 2
    assert "no system role" in one_line_error(result)


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, tiny_adapter, converter):
    result = invoke("--adapter", str(tiny_adapter), "--out", str(tmp_path / "out"), "--dry-run", "--offline",
                    "--forget", str(FORGET))
    assert result.exit_code == 0, result.output
    for label in ("base model", "chat format", "output type", "converter", "free disk"):
        assert label in result.output
    flat = " ".join(result.output.split())
    assert "auto: the first of q4_k_m, q5_k_m, q6_k, q8_0" in flat
    assert "parity check 8" in flat
    assert "nothing was written" in result.output
    assert not (tmp_path / "out").exists()


def test_config_file_section(tmp_path, tiny_adapter, converter):
    config = tmp_path / "relearn.yaml"
    config.write_text("export:\n  quant: q8_0\n  name: from-config\n", encoding="utf-8")
    result = invoke("--adapter", str(tiny_adapter), "--out", str(tmp_path / "out"), "--config", str(config),
                    "--dry-run", "--offline", "--forget", str(FORGET), "--name", "from-flag")
    assert result.exit_code == 0, result.output
    assert "q8_0" in result.output  # from the file
    assert "from-flag" in result.output  # the flag wins over the file
    assert "from-config" not in result.output


def test_missing_base_record_needs_base(tmp_path, tiny_adapter):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    (adapter / "relearn_base.json").unlink()
    result = invoke("--adapter", str(adapter), "--out", str(tmp_path / "out"), "--offline")
    assert result.exit_code == 2
    assert "pass the base it was trained on with --base" in one_line_error(result)


def _merge_must_not_run(*args, **kwargs):
    raise AssertionError("the merge started although preflight should have failed")


def test_finished_out_rejected_before_plan(tmp_path, tiny_adapter, converter):
    from relearn_local.runs import RunFolder

    out = tmp_path / "done"
    folder = RunFolder(out, "export")
    folder.prepare()
    folder.mark_complete()
    result = invoke("--adapter", str(tiny_adapter), "--out", str(out), "--offline", "--forget", str(FORGET))
    assert result.exit_code == 2
    assert "holds the finished output of 'relearn-local export'; pass --force" in one_line_error(result)
