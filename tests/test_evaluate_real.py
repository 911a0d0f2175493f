"""Evaluate the embedded Gemma 3 270M on a small slice of the example sets (slow; real weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from relearn_local.backends.base import GenerationRequest
from relearn_local.evaluate import EvaluateConfig, run_evaluate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.real_model


def test_embedded_base_evaluation(tmp_path, real_base):
    config = EvaluateConfig(model="gemma3-270m", forget=EXAMPLES / "forget.json", retain=EXAMPLES / "retain.json",
                            limit=2, max_new_tokens=16, out=tmp_path / "eval")
    result = run_evaluate(config)
    summary = json.loads((tmp_path / "eval" / "SUMMARY.json").read_text())
    assert summary["items_F"] == 2
    assert summary["items_R"] == 2
    assert summary["reference_model"] == "gemma3-270m"
    assert math.isfinite(summary["LS_F"])
    assert math.isfinite(summary["PPL_R"])
    for record in result.records:
        assert "<end_of_turn>" not in record["answer"]
        assert "<start_of_turn>" not in record["answer"]
        assert record["question"] not in record["answer"]
        assert record["generation"]["completion_tokens"] <= 16


def test_embedded_base_stop_ids(real_base):
    from relearn_local.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(model="gemma3-270m")
    # In Gemma 3, 106 is <end_of_turn> and ends a reply; 107 is a newline and must not.
    assert 106 in backend.stop_ids
    assert 107 not in backend.stop_ids
    request = GenerationRequest(messages=[{"role": "user", "content": "The capital of France is"}], max_tokens=16)
    first = backend.generate(request)
    second = backend.generate(request)
    assert first.text == second.text
    assert "<end_of_turn>" not in first.text
    backend.close()
