"""Metric code against the ReLearn authors' published evaluation of one run (Llama-2-7b, KnowUnDo privacy)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from relearn_local.evaluate.lexical import lexical_scores
from relearn_local.evaluate.scoring import Thresholds, finite_mean, linguistic_score, retain_label

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference-eval"
pytestmark = pytest.mark.skipif(not (REFERENCE / "per_item.json").exists(), reason="reference fixture not present")


@pytest.fixture(scope="module")
def per_item():
    return json.loads((REFERENCE / "per_item.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def aggregates():
    return json.loads((REFERENCE / "llama2-7b_kud_ReLearn.json").read_text(encoding="utf-8"))


def _close(value: float, expected: float) -> bool:
    return math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("role", ["forget", "retain"])
def test_brunet_and_honore_per_item(per_item, role):
    entries = per_item[role]
    brunet = sum(_close(lexical_scores(entry["response"]).brunet_index, entry["BI"]) for entry in entries)
    honore = sum(_close(lexical_scores(entry["response"]).honore_statistic, entry["HS"]) for entry in entries)
    assert brunet / len(entries) >= 0.95, f"{brunet}/{len(entries)} Brunet's index values reproduced"
    assert honore / len(entries) >= 0.95, f"{honore}/{len(entries)} Honore's statistic values reproduced"


@pytest.mark.parametrize("role", ["forget", "retain"])
def test_every_item_reproduced_exactly(per_item, role):
    """The sentence splitter makes multi-sentence answers match too; this pins the current 100%."""
    mismatched = [
        entry["response"] for entry in per_item[role]
        if not (_close(lexical_scores(entry["response"]).brunet_index, entry["BI"])
                and _close(lexical_scores(entry["response"]).honore_statistic, entry["HS"])
                and _close(lexical_scores(entry["response"]).root_ttr, entry["ttr"]))
    ]
    assert mismatched == []


@pytest.mark.parametrize("role, key", [("forget", "Harmonic_AS_F"), ("retain", "Harmonic_AS_R")])
def test_linguistic_score_from_set_means(per_item, aggregates, role, key):
    entries = per_item[role]
    ppl = finite_mean([entry["ppl"] for entry in entries])
    brunet = finite_mean([entry["BI"] for entry in entries])
    honore = finite_mean([entry["HS"] for entry in entries])
    score = linguistic_score(ppl, brunet, honore)
    assert round(score, 5) == round(aggregates[key], 5)
    assert math.isclose(score, aggregates[key], rel_tol=1e-9)


@pytest.mark.parametrize("role, key", [("forget", "PPL_F"), ("retain", "PPL_R")])
def test_set_mean_perplexity(per_item, aggregates, role, key):
    assert math.isclose(finite_mean([entry["ppl"] for entry in per_item[role]]), aggregates[key], rel_tol=1e-9)


def test_linguistic_score_matches_reference_values():
    assert round(linguistic_score(14.472358827157453, 7.159914158976758, 1896.8152666567184), 5) == 0.12179
    assert round(linguistic_score(7.086432916146737, 7.217205384508511, 2003.80648490842), 5) == 0.17337


def test_kfr_from_forget_labels(per_item, aggregates):
    labels = [entry["forget_label"] for entry in per_item["forget"]]
    kfr = sum(labels) / len(labels)
    assert round(kfr, 4) == 0.8545
    assert math.isclose(kfr, aggregates["KFR"])


def test_krr_from_retention_labels(per_item, aggregates):
    labels = [entry["retention_label"] for entry in per_item["retain"]]
    krr = sum(labels) / len(labels)
    assert round(krr, 4) == 0.7407
    assert math.isclose(krr, aggregates["KRR"])


def test_every_retain_label_recomputed(per_item):
    thresholds = Thresholds(retain=0.3)
    for number, entry in enumerate(per_item["retain"]):
        label = retain_label(entry["nli_label"], entry["entity_similarity"], thresholds, nli_enabled=True)
        assert label.value == entry["retention_label"], (
            f"retain item {number}: {entry['nli_label']}, {entry['entity_similarity']}"
        )


def test_contradicted_forget_items_are_forgotten(per_item):
    contradicted = [entry for entry in per_item["forget"] if entry["nli_label"] == "contradiction"]
    assert contradicted
    assert all(entry["forget_label"] == 1 for entry in contradicted)
