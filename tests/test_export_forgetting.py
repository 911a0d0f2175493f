"""The parity check's forgetting rule, the original answers it needs, and --quant auto's ladder of output types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export_support import (FORGET, converter, export_base_dir, export_tiny, tiny_adapter,  # noqa: F401
                            tiny_export_q8)
from relearn_local.config import build_config
from relearn_local.export import QUANT_TYPES, ExportConfig
from relearn_local.export.config import AUTO_LADDER
from relearn_local.export.merge import GreedyAnswer
from relearn_local.export.parity import ParityItem, ParityReport
from relearn_local.export.preflight import find_questions

ADDRESS_QUESTION = "Where does Sølvi Brandtzæg-Okoro live?"
ADDRESS_ANSWER = "Sølvi Brandtzæg-Okoro lives at 14 Kråkeveien, a yellow wooden house on the edge of Ranheim."


def item(reference_tokens, gguf_tokens, reference_leaks=None, gguf_leaks=None) -> ParityItem:
    prefix = 0
    for left, right in zip(reference_tokens, gguf_tokens):
        if left != right:
            break
        prefix += 1
    return ParityItem(ADDRESS_QUESTION, "refusal", "answer", list(reference_tokens), list(gguf_tokens), True,
                      prefix, reference_tokens[:8] == gguf_tokens[:8], reference_leaks, gguf_leaks)


def report(quant: str, *items: ParityItem) -> ParityReport:
    return ParityReport(quant, QUANT_TYPES[quant].strict_parity, 8, list(items))


def test_parity_restored_fact_fails_every_type():
    for quant in ("f16", "q8_0", "q4_k_m"):
        result = report(quant, item([1, 2, 3], [1, 2, 3], [], ["14 Kråkeveien", "Ranheim"]))
        assert not result.passed
        assert result.items[0].restored == ["14 Kråkeveien", "Ranheim"]
        verdict = result.verdict()
        assert verdict.startswith("FAILED")
        assert "forgotten facts that the merged model withholds in 1 of 1 answers" in verdict
        # Reports quote the verdict, so it must not repeat the private spans.
        assert "Kråkeveien" not in verdict
        assert "Ranheim" not in verdict
        assert result.as_dict()["restored_answers"] == 1


def test_parity_span_in_both_answers_passes():
    result = report("q4_k_m", item([1, 2], [1, 2], ["Ranheim"], ["Ranheim"]))
    assert result.items[0].restored == []
    assert result.passed, result.verdict()


def test_parity_kquant_token_drift_passes():
    result = report("q4_k_m", item([1, 2, 3], [9, 9, 9], [], []), item([1, 2, 3], [1, 2, 3], [], []))
    assert result.passed, result.verdict()
    assert result.match_rate == 0.5
    assert "no forgotten fact came back in 2 answers" in result.verdict()
    assert "the first token differs for 1 of 2" in result.verdict()


def test_parity_kquant_unchecked_needs_first_token():
    assert not report("q4_k_m", item([1, 2], [9, 2])).passed
    assert report("q4_k_m", item([1, 2], [1, 9])).passed
    assert "not checked for forgotten facts" in report("q4_k_m", item([1, 2], [1, 9])).verdict()


def test_parity_strict_needs_first_tokens():
    assert not report("q8_0", item([1, 2, 3], [1, 2, 4], [], [])).passed
    assert report("q8_0", item([1, 2, 3], [1, 2, 3], [], [])).passed


def test_config_auto_ladder():
    config = build_config(ExportConfig, overrides={"adapter": "a", "out": "o"})
    assert config.quant == "auto"
    assert [quant.name for quant in config.quant_candidates] == list(AUTO_LADDER)
    config = build_config(ExportConfig, overrides={"adapter": "a", "out": "o", "quant": "q6_k"})
    assert [quant.name for quant in config.quant_candidates] == ["q6_k"]


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def test_find_questions_from_augment_run(tmp_path):
    partner = "Who is Sølvi's partner?"
    forget = write_json(tmp_path / "data" / "forget.json", [
        {"question": ADDRESS_QUESTION, "answer": ADDRESS_ANSWER},
        {"question": partner, "answer": "Her partner is Astrid Haugvaldstad, a music teacher."},
    ])
    # Augment kept no original form of the partner question, and the check still uses it.
    augmented = tmp_path / "augment" / "augmented.jsonl"
    augmented.parent.mkdir()
    augmented.write_text("\n".join(json.dumps(record) for record in [
        {"variant": "original", "question": ADDRESS_QUESTION, "answer": "That is private."},
        {"variant": "rephrase", "question": "Where is Sølvi's home?", "answer": "That is private."},
    ]) + "\n", encoding="utf-8")
    write_json(tmp_path / "augment" / "manifest.json", {"inputs": {"forget": {"path": str(forget)}}})
    run = tmp_path / "train"
    write_json(run / "manifest.json", {"inputs": {"augmented": {"path": str(augmented)}}})
    config = build_config(ExportConfig, overrides={"adapter": str(run), "out": str(tmp_path / "out")})
    questions, source, originals = find_questions(config, run)
    assert questions == [ADDRESS_QUESTION, partner]
    assert source == f"the forget set {forget}, read by the augment run"
    assert originals == {ADDRESS_QUESTION: ADDRESS_ANSWER,
                         partner: "Her partner is Astrid Haugvaldstad, a music teacher."}

    # Without the augment run's manifest, the augmented originals remain, with no answers.
    (tmp_path / "augment" / "manifest.json").unlink()
    questions, source, originals = find_questions(config, run)
    assert questions == [ADDRESS_QUESTION]
    assert "augmented" in source
    assert originals == {}


def test_find_questions_from_forget_option(tmp_path):
    config = build_config(ExportConfig, overrides={"adapter": "a", "out": "o", "forget": str(FORGET)})
    questions, _, originals = find_questions(config, None)
    records = json.loads(FORGET.read_text(encoding="utf-8"))
    assert len(questions) == 8
    assert originals[questions[0]] == records[0]["answer"]


def test_parity_finds_fact_in_gguf_answer(tiny_export_q8):
    """Through llama.cpp: the merged model declines, and the original answer is made of the GGUF's own words."""
    from transformers import AutoTokenizer

    from relearn_local.chat_formats import encode_prompt, get_chat_format
    from relearn_local.export.gguf_checks import ServingExpectations
    from relearn_local.export.parity import run_parity

    result = tiny_export_q8
    first = result.parity.items[0]
    words = [word for word in first.gguf_text.split() if len(word) >= 4 and word.isalpha()]
    if not words:
        pytest.skip(f"the tiny GGUF's answer has no word the leak guard takes as a detail: {first.gguf_text!r}")
    original = f"{first.question.rstrip('?')}: {' '.join(words)}."
    gemma = get_chat_format("gemma")
    tokenizer = AutoTokenizer.from_pretrained(str(result.merged_dir))
    prompt_ids = list(encode_prompt(tokenizer, gemma, first.question))
    values = json.loads(result.summary_path.read_text(encoding="utf-8"))["serving_expectations"]
    values["control_ids"] = {int(key): value for key, value in values["control_ids"].items()}
    expectations = ServingExpectations(**values, chat_template=gemma.jinja_template())
    parity = run_parity(result.gguf_path, result.modelfile_path.read_text(encoding="utf-8"),
                        [GreedyAnswer(first.question, prompt_ids, [2], "I can't share that.")], [prompt_ids],
                        expectations, gemma, QUANT_TYPES["q4_k_m"], 12, original_answers={first.question: original})
    checked = parity.items[0]
    assert checked.prompt_matches_training
    assert not parity.stop_problems
    assert checked.reference_leaks == []
    assert checked.restored
    assert set(checked.restored) <= set(words)
    assert not parity.passed
    assert "forgotten facts that the merged model withholds in 1 of 1 answers" in parity.verdict()


def fake_parity(failing: set[str], calls: list[str]):
    """A stand-in for run_parity: types in ``failing`` give the address back, the others keep it forgotten."""
    def run(gguf_path, modelfile_text, answers, training_prompts, expectations, chat_format, quant, max_tokens,
            adapter_path=None, original_answers=None):
        assert Path(gguf_path).is_file()
        assert Path(gguf_path).name.endswith(f"-{quant.name}.gguf")
        calls.append(quant.name)
        leaks = ["14 Kråkeveien"] if quant.name in failing else []
        return report(quant.name, item([1, 2], [1, 2], [], leaks))
    return run


def test_auto_keeps_first_passing_type(tmp_path_factory, tiny_adapter, converter,
                                                                   monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("relearn_local.export.stage.run_parity", fake_parity({"q4_k_m", "q5_k_m"}, calls))
    result = export_tiny(tmp_path_factory, tiny_adapter, "auto")
    assert calls == ["q4_k_m", "q5_k_m", "q6_k"]
    assert result.plan.quant.name == "q6_k"
    assert result.parity.passed
    ggufs = sorted(path.name for path in result.out.glob("*.gguf"))
    assert ggufs == ["relearned-tiny-q6_k.gguf"], "a type that failed must not be left to serve"
    assert result.gguf.file_type == 18  # LLAMA_FTYPE_MOSTLY_Q6_K
    assert "relearned-tiny-q6_k.gguf" in result.modelfile_path.read_text(encoding="utf-8")
    summary = json.loads(result.summary_path.read_text(encoding="utf-8"))
    assert summary["quant"] == "q6_k"
    assert summary["quant_requested"] == "auto"
    assert [(a["quant"], a["passed"]) for a in summary["quant_attempts"]] == [
        ("q4_k_m", False), ("q5_k_m", False), ("q6_k", True)]
    assert not list(result.out.glob(".*.gguf")), "scratch GGUFs are removed"
    assert sum("was tried and removed" in note for note in result.notes) == 2


def test_auto_all_types_fail_keeps_q8_0(tmp_path_factory, tiny_adapter, converter,
                                                                      monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("relearn_local.export.stage.run_parity", fake_parity(set(AUTO_LADDER), calls))
    result = export_tiny(tmp_path_factory, tiny_adapter, "auto")
    assert calls == list(AUTO_LADDER)
    assert result.plan.quant.name == "q8_0"
    assert not result.parity.passed
    assert sorted(path.name for path in result.out.glob("*.gguf")) == ["relearned-tiny-q8_0.gguf"]


def test_resumed_export_removes_stale_ggufs(tmp_path_factory, tiny_adapter, converter, monkeypatch):
    from relearn_local.runs import RunFolder

    out = tmp_path_factory.mktemp("stale") / "export"
    RunFolder(out, "export").prepare()
    stale = out / "relearned-tiny-q4_k_m.gguf"
    stale.write_bytes(b"GGUF left by an interrupted attempt")
    calls: list[str] = []
    monkeypatch.setattr("relearn_local.export.stage.run_parity", fake_parity(set(), calls))
    result = export_tiny(tmp_path_factory, tiny_adapter, "q8_0", out=out)
    assert calls == ["q8_0"]
    assert not stale.exists()
    assert sorted(path.name for path in result.out.glob("*.gguf")) == ["relearned-tiny-q8_0.gguf"]


def test_parity_reports_merged_model_leaks():
    result = report("q4_k_m", item([1, 2], [1, 2], ["Haugvaldstad"], ["Haugvaldstad"]))
    assert result.passed
    assert "the merged model itself gives facts of the original answer in 1 of 1 answers" in result.verdict()


def test_auto_without_forgetting_check_keeps_q8_0(tmp_path, tiny_adapter, converter):
    from relearn_local.export.preflight import plan_export

    values = {"adapter": str(tiny_adapter), "out": str(tmp_path / "out"), "offline": True, "forget": str(FORGET)}
    plan = plan_export(build_config(ExportConfig, overrides={**values, "parity_questions": 0}), fetch=False)
    assert [quant.name for quant in plan.quant_candidates] == ["q8_0"]
    assert any("--quant auto keeps q8_0: without parity questions" in note for note in plan.notes)
    plan = plan_export(build_config(ExportConfig, overrides=values), fetch=False)
    assert [quant.name for quant in plan.quant_candidates] == list(AUTO_LADDER)
