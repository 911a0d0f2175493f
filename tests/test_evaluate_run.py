"""run_evaluate and the evaluate command end to end, on tiny models, scripted backends and answer files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from relearn_local.backends.base import GenerationResult
from relearn_local.cli import cli
from relearn_local.errors import ConfigError, InputError, RunFolderError
from relearn_local.evaluate import EvaluateConfig, compare_runs, run_evaluate
from relearn_local.evaluate.entities import EntityMatcher

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session", autouse=True)
def _minilm_loaded_once():
    """Load the packaged MiniLM once; run_evaluate reuses the cached model in every test."""
    EntityMatcher()


def _pairs(name: str, count: int) -> list[dict]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))[:count]


def _answers_file(path: Path, answer_for) -> Path:
    rows = []
    for role, name in (("forget", "forget.json"), ("retain", "retain.json")):
        for pair in _pairs(name, 4):
            rows.append({"set": role, "query": pair["question"], "ground_truth": pair["answer"],
                         "generated_response": answer_for(pair)})
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _config(tmp_path: Path, reference: Path, **values) -> EvaluateConfig:
    values.setdefault("out", tmp_path / "eval")
    values.setdefault("entity_extractor", "rules")
    return EvaluateConfig(reference_model=str(reference), **values)


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, float):
        yield value


def test_answers_equal_to_ground_truth(tmp_path, tiny_model_dir):
    answers = _answers_file(tmp_path / "same.jsonl", lambda pair: pair["answer"])
    result = run_evaluate(_config(tmp_path, tiny_model_dir, answers=[str(answers)]))
    assert result.summary["KFR"] == 0.0
    assert result.summary["KRR"] == 1.0
    assert result.summary["RougeL_recall_F"] == 1.0
    assert result.summary["nli_source"] == "off"
    assert result.summary["coverage_F"] == 1.0
    for name in ("EVAL.json", "SUMMARY.json", "answers.jsonl", "manifest.json", "config.yaml"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert json.loads((tmp_path / "eval" / "state.json").read_text())["status"] == "complete"


def test_degenerate_answers_finite_or_na(tmp_path, tiny_model_dir):
    degenerate = iter(["", "ok", " ".join(["the"] * 5000), "", "ok", " ".join(["the"] * 5000), "", "ok"])
    answers = _answers_file(tmp_path / "bad.jsonl", lambda pair: next(degenerate))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = run_evaluate(_config(tmp_path, tiny_model_dir, answers=[str(answers)], max_ppl_tokens=64))
    summary = json.loads((tmp_path / "eval" / "SUMMARY.json").read_text())
    evaluation = json.loads((tmp_path / "eval" / "EVAL.json").read_text())
    assert all(math.isfinite(value) for value in _numbers(summary))
    assert all(math.isfinite(value) for value in _numbers(evaluation))
    assert math.isfinite(summary["LS_F"])
    assert math.isfinite(summary["LS_R"])
    empty = [record for record in evaluation["forget"]["value_by_index"].values() if record["answer"] == ""]
    assert empty
    assert all(record["ppl"] is None and record["ppl_na_reason"] == "empty answer" for record in empty)
    assert summary["ppl_items_F"] == 4 - len(empty)
    assert result.forget.rate == 1.0


def test_no_ppl_makes_ls_na_with_reason(tmp_path, tiny_model_dir):
    answers = _answers_file(tmp_path / "same.jsonl", lambda pair: pair["answer"])
    result = run_evaluate(_config(tmp_path, tiny_model_dir, answers=[str(answers)], ppl=False))
    assert result.summary["LS_F"] is None
    assert "--no-ppl" in result.summary["LS_F_reason"]
    assert result.summary["reference_model"] is None


class ScriptedModel:
    """A generation backend that echoes the question and invents a next turn, as small models do."""

    name = "scripted"
    model = "scripted-model"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.calls = 0
        self.closed = False

    def generate(self, request):
        self.calls += 1
        question = request.messages[-1]["content"]
        reply = self.answers.get(question, "I do not know.")
        return GenerationResult(text=f"{question}\n{reply}\nQuestion: What else?\nAnswer: Nothing.",
                                completion_tokens=12)

    def stream(self, request):
        yield self.generate(request).text

    def describe(self):
        return {"backend": self.name, "model": self.model}

    def close(self):
        self.closed = True


class ScriptedJudge(ScriptedModel):
    """A judge that calls every pair a contradiction, except that its first reply is malformed."""

    def __init__(self):
        super().__init__({})
        self.replies = ["{}", "{}", "{}"]

    def generate(self, request):
        self.calls += 1
        return GenerationResult(text=self.replies.pop(0) if self.replies else '{"label": "contradiction"}')


def test_generated_answers_are_cleaned_and_repeatable(tmp_path, tiny_model_dir, monkeypatch):
    forget = _pairs("forget.json", 3)
    model = ScriptedModel({pair["question"]: pair["answer"] for pair in forget})
    monkeypatch.setattr("relearn_local.evaluate.stage.open_backend", lambda config: model)
    config = _config(tmp_path, tiny_model_dir, model="scripted", forget=EXAMPLES / "forget.json", limit=3)
    first = run_evaluate(config)
    records = [record for record in first.records if record["set"] == "forget"]
    assert [record["answer"] for record in records] == [pair["answer"] for pair in forget]
    assert first.summary["KFR"] == 0.0
    assert first.summary["items_R"] == 0
    assert first.summary["KRR"] is None
    assert model.closed
    config.out = tmp_path / "again"
    second = run_evaluate(config)
    assert {key: value for key, value in second.summary.items() if key != "seconds"} == \
        {key: value for key, value in first.summary.items() if key != "seconds"}


def test_judge_failure_counts_as_na(tmp_path, tiny_model_dir, monkeypatch):
    answers = _answers_file(tmp_path / "same.jsonl", lambda pair: pair["answer"])
    judge = ScriptedJudge()
    monkeypatch.setattr("relearn_local.backends.get_backend", lambda name, model=None, **options: judge)
    result = run_evaluate(_config(tmp_path, tiny_model_dir, answers=[str(answers)], nli_judge="ollama:judge",
                                  judge_retries=2, ppl=False))
    summary = result.summary
    assert summary["nli_source"] == "judge:scripted:scripted-model"
    assert summary["judged_F"] == 3
    assert summary["na_F"] == 1
    assert summary["coverage_F"] == 0.75
    assert list(summary["na_reasons_F"]) == ["judge reply is not a valid verdict: '{}'"]
    # Contradicted retain answers are lost; contradicted forget answers count as forgotten.
    assert summary["KFR"] == 1.0
    assert summary["KRR"] == 0.0


def test_generation_with_tiny_transformers_model(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, model=str(tiny_model_dir), forget=EXAMPLES / "forget.json",
                     retain=EXAMPLES / "retain.json", limit=2, max_new_tokens=8, batch_size=2)
    events = []
    result = run_evaluate(config, events.append)
    assert len(result.records) == 4
    assert {event.task for event in events} >= {"generate", "perplexity", "entities"}
    rows = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    assert [row["set"] for row in rows] == ["forget", "forget", "retain", "retain"]
    assert all(row["generation"]["completion_tokens"] <= 8 for row in rows)
    assert not (tmp_path / "eval" / "answers.partial.jsonl").exists()
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert manifest["generator"]["backend"]["backend"] == "transformers"
    assert "forget" in manifest["inputs"]


def test_resume_reuses_saved_answers(tmp_path, tiny_model_dir, monkeypatch):
    forget = _pairs("forget.json", 2)
    model = ScriptedModel({pair["question"]: pair["answer"] for pair in forget})
    monkeypatch.setattr("relearn_local.evaluate.stage.open_backend", lambda config: model)
    config = _config(tmp_path, tiny_model_dir, model="scripted", forget=EXAMPLES / "forget.json", limit=2, ppl=False)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"stage": "evaluate", "status": "failed"}))
    from relearn_local.evaluate.stage import _fingerprint

    fingerprint = _fingerprint(model.describe(), config)
    saved = {"key": ["forget", 0, forget[0]["question"]], "fingerprint": fingerprint, "answer": "Saved answer.",
             "error": None, "generation": {}}
    (out / "answers.partial.jsonl").write_text(json.dumps(saved) + "\n{cut line")
    result = run_evaluate(config)
    assert model.calls == 1
    assert result.records[0]["answer"] == "Saved answer."


def test_partial_answers_survive_cut_line(tmp_path, monkeypatch):
    from relearn_local.evaluate.items import items_from_sets
    from relearn_local.evaluate.stage import PARTIAL_ANSWERS, _generate

    forget = _pairs("forget.json", 2)
    model = ScriptedModel({pair["question"]: pair["answer"] for pair in forget})
    monkeypatch.setattr("relearn_local.evaluate.stage.open_backend", lambda config: model)
    (tmp_path / PARTIAL_ANSWERS).write_text('{"key": ["forget", 0, "cut')
    config = EvaluateConfig(model="scripted", forget=EXAMPLES / "forget.json", limit=2, batch_size=1)
    _generate(items_from_sets(config.forget, None, 2), config, tmp_path, None)
    lines = (tmp_path / PARTIAL_ANSWERS).read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["answer"] for line in lines[1:]] == [pair["answer"] for pair in forget]


def test_finished_run_not_overwritten(tmp_path, tiny_model_dir):
    answers = _answers_file(tmp_path / "same.jsonl", lambda pair: pair["answer"])
    config = _config(tmp_path, tiny_model_dir, answers=[str(answers)], ppl=False)
    run_evaluate(config)
    with pytest.raises(RunFolderError, match="--force"):
        run_evaluate(config)


@pytest.mark.parametrize("record, message", [
    ({"query": "Q?", "ground_truth": "A.", "generated_response": "A."}, "set"),
    ({"set": "forget", "ground_truth": "A.", "generated_response": "A."}, "'query' is missing"),
    ({"set": "forget", "query": "Q?", "ground_truth": "A.", "generated_response": None}, "NoneType"),
    ({"set": "forget", "query": "Q?", "ground_truth": " ", "generated_response": "A."}, "'ground_truth' is empty"),
])
def test_bad_answer_records(tmp_path, tiny_model_dir, record, message):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(InputError, match=message) as raised:
        run_evaluate(_config(tmp_path, tiny_model_dir, answers=[str(path)], ppl=False))
    assert "record 1" in str(raised.value)


def test_answers_with_set_prefix(tmp_path, tiny_model_dir):
    path = tmp_path / "retain_answers.json"
    path.write_text(json.dumps([{"query": "Who is Tomasz?", "ground_truth": "Tomasz is a painter from Krakow.",
                                 "generated_response": "Tomasz is a painter from Krakow."}]))
    result = run_evaluate(_config(tmp_path, tiny_model_dir, answers=[f"retain={path}"], ppl=False))
    assert result.summary["KRR"] == 1.0
    assert result.summary["items_F"] == 0


@pytest.mark.parametrize("values, message", [
    ({}, "--model"),
    ({"model": "gemma3-270m"}, "--forget"),
    ({"answers": ["a.json"], "model": "gemma3-270m"}, "drop --model"),
    ({"answers": ["a.json"], "nli_model": Path("x"), "nli_judge": "ollama:x"}, "one NLI source"),
    ({"answers": ["a.json"], "forget_threshold": 1.5}, "between 0 and 1"),
])
def test_config_validation(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        run_evaluate(EvaluateConfig(out=tmp_path / "eval", **values))


def test_cli_prints_table_and_compares(tmp_path, tiny_model_dir):
    same = _answers_file(tmp_path / "same.jsonl", lambda pair: pair["answer"])
    refusal = _answers_file(tmp_path / "refusal.jsonl", lambda pair: "I cannot share personal details.")
    runner = CliRunner()
    for name, path in (("before", same), ("after", refusal)):
        result = runner.invoke(cli, ["-q", "evaluate", "--answers", str(path), "--out", str(tmp_path / name),
                                     "--reference-model", str(tiny_model_dir), "--entity-extractor", "rules"])
        assert result.exit_code == 0, result.output
        assert "KFR (forget) / KRR (retain)" in result.output
        assert "NLI: off" in result.output
    chart = tmp_path / "chart.png"
    result = runner.invoke(cli, ["evaluate", "--compare", str(tmp_path / "before"), str(tmp_path / "after"),
                                 "--chart", str(chart), "--examples", "2"])
    assert result.exit_code == 0, result.output
    assert "before" in result.output
    assert "I cannot share personal details." in result.output
    assert "+1.0000" in result.output
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_runs_result(tmp_path, tiny_model_dir):
    for name, answer in (("a", lambda pair: pair["answer"]), ("b", lambda pair: "No idea.")):
        answers = _answers_file(tmp_path / f"{name}.jsonl", answer)
        run_evaluate(_config(tmp_path, tiny_model_dir, answers=[str(answers)], out=tmp_path / name, ppl=False))
    result = compare_runs(tmp_path / "a", tmp_path / "b", tmp_path / "c.png", examples=3)
    kfr = next(row for row in result.rows if row[0].startswith("KFR") and row[1] == "forget")
    assert kfr[2:] == ("0.0000", "1.0000", "+1.0000")
    assert len(result.examples) == 3
    assert result.examples[0].answer_b == "No idea."
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_compare_rejects_unfinished_folder(tmp_path):
    with pytest.raises(InputError, match="SUMMARY.json"):
        compare_runs(tmp_path, tmp_path)


def test_cli_bad_answers_file_is_one_line(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([{"query": "Q?", "ground_truth": "A.", "generated_response": "A."}]))
    result = CliRunner().invoke(cli, ["evaluate", "--answers", str(path), "--out", str(tmp_path / "o"), "--no-ppl"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error:")
