"""CLI shape: help and version without heavy imports, one-line errors with exit code 2, inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from relearn_local import __version__
from relearn_local.cli import cli

SUBCOMMANDS = ["inspect", "augment", "inject", "train", "export", "evaluate", "run", "serve"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "knowundo-privacy"


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version():
    result = run_cli("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_subcommands_in_pipeline_order():
    result = run_cli("--help")
    assert result.exit_code == 0
    positions = [result.output.index(f"  {name} ") for name in SUBCOMMANDS]
    assert positions == sorted(positions)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_has_examples(name):
    result = run_cli(name, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output


@pytest.mark.parametrize("argument", ["--help", "--version"])
def test_help_imports_no_heavy_packages(argument):
    script = (
        "import sys\n"
        "from relearn_local.cli import main\n"
        "try:\n"
        f"    main([{argument!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [name for name in ('torch', 'llama_cpp', 'transformers', 'unsloth', 'rich') if name in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "HEAVY=\n" in output


def test_inspect_examples():
    result = run_cli("inspect", str(EXAMPLES / "forget.json"), str(EXAMPLES / "retain.json"))
    assert result.exit_code == 0, result.output
    assert "usable" in result.output


def test_inspect_empty_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[]")
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "empty" in lines[0]
    assert "Traceback" not in result.output


def test_inspect_missing_answer(tmp_path):
    path = tmp_path / "one_missing.json"
    path.write_text(json.dumps([{"question": "Q?", "answer": "A."}, {"question": "Q2?"}]))
    # A wide console keeps each problem on one table line.
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "error: record 2: field 'answer' is missing" in result.output


def test_inspect_missing_file(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "not found" in result.output


@pytest.mark.skipif(not SHARED.exists(), reason="shared KnowUnDo data not present")
def test_inspect_knowundo():
    result = run_cli("inspect", str(SHARED / "unlearn_train.json"))
    assert result.exit_code == 0
    assert "400" in result.output
    assert "'text'" in result.output
    assert "'labels'" in result.output


def test_verbose_and_quiet_conflict():
    result = CliRunner().invoke(cli, ["--verbose", "--quiet", "inspect", "x"])
    assert result.exit_code == 2


def test_progress_remove_tasks_keeps_named():
    from relearn_local.cli.common import RichProgress
    from relearn_local.progress import report

    with RichProgress(enabled=True) as progress:
        report(progress, "pipeline", 1, 6, "stage 2/6: train")
        report(progress, "train", 3, 10, "training, epoch 1")
        report(progress, "merge", 5, 5, "merged", done=True)
        progress.remove_tasks(keep=("pipeline",))
        descriptions = [task.description for task in progress._progress.tasks]
        assert descriptions == ["stage 2/6: train"]
        report(progress, "train", 1, 4, "training again")
        descriptions = [task.description for task in progress._progress.tasks]
        assert descriptions == ["stage 2/6: train", "training again"]
