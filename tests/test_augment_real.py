"""augment on the embedded Gemma 3 270M through llama.cpp: a small slice of the examples, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relearn_local.augment.leak_guard import LeakGuard
from relearn_local.cli import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.real_model
def test_augment_with_embedded_model(tmp_path):
    records = json.loads((EXAMPLES / "forget.json").read_text(encoding="utf-8"))
    chosen = [records[0], records[8]]
    forget = tmp_path / "forget.json"
    forget.write_text(json.dumps(chosen, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["augment", "--backend", "llamacpp", "--forget", str(forget), "--out", str(out),
                                      "--no-cache"])
    assert result.exit_code == 0, result.output
    augmented = [json.loads(line) for line in (out / "augmented.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {"rephrase", "context", "noise", "reverse"} <= {record["variant"] for record in augmented}
    guards = {str(index + 1): LeakGuard(pair["question"], pair["answer"]) for index, pair in enumerate(chosen)}
    for record in augmented:
        guard = guards[record["item_id"]]
        assert guard.leaks(record["answer"]) == [], record
        assert guard.leaks(record["question"]) == [], record
        if record["verdict"]:
            assert guard.leaks(record["verdict"]["reason"]) == [], record
        assert record["answer"] not in {pair["answer"] for pair in chosen}
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["complete"] is True
    assert summary["items_with_accepted_answer"] == 2
    assert summary["writer"]["family"] == "gemma"
    assert summary["llm_calls"] >= 6
