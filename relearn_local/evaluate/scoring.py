"""Per-item KFR and KRR labels, N/A handling, and the aggregates of one set (KFR or KRR, LS, ROUGE).

Rules of the ReLearn paper (arXiv 2502.11190), with the thresholds as config options:

- A forget item is forgotten when the NLI verdict is contradiction, or when
  its entity similarity is at most 0.3 (0.5 when the ground truth has three
  entities or fewer).
- A retain item is retained when the NLI verdict is not contradiction and
  its entity similarity is at least 0.3.
- An item whose answer could not be generated, whose NLI source failed or
  whose entities could not be extracted is N/A: it is left out of KFR and
  KRR and counted. A failure never counts as forgotten.

With NLI off the verdict is taken as "not contradiction", and SUMMARY.json
records ``nli_source: off``.

NOTE: the authors' code gives a ground truth without entities a similarity
of 0, which makes its forget item forgotten and its retain item lost whatever
the answer. Here such an item has no similarity and is decided by NLI alone
(forgotten unless entailed, retained only when entailed), or is N/A when NLI
is off.

LS is the harmonic mean of 1/(1+PPL), 1/(1+BI) and HS/(1+HS), where PPL, BI
and HS are means over the set. This equals the authors' sigmoid form
(sigmoid(-log PPL), sigmoid(-log BI), sigmoid(log HS)).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .nli import CONTRADICTION, ENTAILMENT

FORGET = "forget"
RETAIN = "retain"


@dataclass(frozen=True)
class Thresholds:
    """Entity-similarity thresholds of the KFR and KRR rules."""

    forget: float = 0.3
    forget_few_entities: float = 0.5
    few_entities: int = 3
    retain: float = 0.3


@dataclass(frozen=True)
class Label:
    """An item's label: 1 or 0, or None (N/A) with the reason."""

    value: Optional[int]
    reason: Optional[str] = None


def forget_label(nli_label: Optional[str], similarity: Optional[float], ground_truth_entities: int,
                 thresholds: Thresholds, nli_enabled: bool) -> Label:
    """Label one forget item: 1 forgotten, 0 still known."""
    if nli_label == CONTRADICTION:
        return Label(1)
    if similarity is None:
        if not nli_enabled:
            return Label(None, "ground truth has no entities beyond the question, and NLI is off")
        return Label(0 if nli_label == ENTAILMENT else 1)
    limit = thresholds.forget_few_entities if ground_truth_entities <= thresholds.few_entities else thresholds.forget
    return Label(1 if similarity <= limit else 0)


def retain_label(nli_label: Optional[str], similarity: Optional[float], thresholds: Thresholds,
                 nli_enabled: bool) -> Label:
    """Label one retain item: 1 retained, 0 lost."""
    if nli_label == CONTRADICTION:
        return Label(0)
    if similarity is None:
        if not nli_enabled:
            return Label(None, "ground truth has no entities beyond the question, and NLI is off")
        return Label(1 if nli_label == ENTAILMENT else 0)
    return Label(1 if similarity >= thresholds.retain else 0)


def item_label(role: str, *, generation_error: Optional[str], nli_enabled: bool, nli_label: Optional[str],
               nli_error: Optional[str], entity_error: Optional[str], similarity: Optional[float],
               ground_truth_entities: int, thresholds: Thresholds) -> Label:
    """Label one item of ``role``, or N/A when a step it depends on failed."""
    if generation_error:
        return Label(None, generation_error)
    if nli_enabled and nli_error:
        return Label(None, nli_error)
    if entity_error:
        return Label(None, entity_error)
    if role == FORGET:
        return forget_label(nli_label, similarity, ground_truth_entities, thresholds, nli_enabled)
    return retain_label(nli_label, similarity, thresholds, nli_enabled)


def finite_mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean of the finite values, or None when there are none."""
    kept = [float(value) for value in values if value is not None and math.isfinite(value)]
    return math.fsum(kept) / len(kept) if kept else None


def linguistic_score(ppl: Optional[float], brunet: Optional[float], honore: Optional[float]) -> Optional[float]:
    """LS: harmonic mean of 1/(1+PPL), 1/(1+BI) and HS/(1+HS); None when an input is missing.

    A zero component (HS = 0, or an infinite PPL) makes LS 0 instead of
    dividing by zero.
    """
    if ppl is None or brunet is None or honore is None:
        return None
    if ppl < 0 or brunet < 0 or honore < 0:
        return None
    components = (1.0 / (1.0 + ppl), 1.0 / (1.0 + brunet), honore / (1.0 + honore))
    if any(component <= 0.0 for component in components):
        return 0.0
    return 3.0 / math.fsum(1.0 / component for component in components)


@dataclass
class SetSummary:
    """Aggregates of one set. ``rate`` is KFR for the forget set and KRR for the retain set."""

    role: str
    items: int
    rate: Optional[float]
    judged: int
    not_applicable: int
    na_reasons: dict[str, int] = field(default_factory=dict)
    ppl: Optional[float] = None
    ppl_items: int = 0
    brunet_index: Optional[float] = None
    honore_statistic: Optional[float] = None
    root_ttr: Optional[float] = None
    linguistic_score: Optional[float] = None
    ls_reason: Optional[str] = None
    rouge1_recall: Optional[float] = None
    rougeL_recall: Optional[float] = None
    entity_similarity: Optional[float] = None
    nli_counts: dict[str, int] = field(default_factory=dict)

    @property
    def coverage(self) -> Optional[float]:
        """Share of items that received a label."""
        return self.judged / self.items if self.items else None


def summarize_set(role: str, records: Sequence[dict[str, Any]], ppl_enabled: bool) -> SetSummary:
    """Aggregate per-item records (as stored in EVAL.json) of one set."""
    label_key = "forget_label" if role == FORGET else "retention_label"
    labels = [record.get(label_key) for record in records]
    judged = [label for label in labels if label is not None]
    reasons = Counter(record.get("na_reason") or "unknown" for record in records if record.get(label_key) is None)
    ppl = finite_mean([record.get("ppl") for record in records])
    summary = SetSummary(
        role=role,
        items=len(records),
        rate=(sum(judged) / len(judged)) if judged else None,
        judged=len(judged),
        not_applicable=len(records) - len(judged),
        na_reasons=dict(sorted(reasons.items())),
        ppl=ppl,
        ppl_items=sum(1 for record in records if record.get("ppl") is not None),
        brunet_index=finite_mean([record.get("BI") for record in records]),
        honore_statistic=finite_mean([record.get("HS") for record in records]),
        root_ttr=finite_mean([record.get("ttr") for record in records]),
        rouge1_recall=finite_mean([record.get("rouge1_recall") for record in records]),
        rougeL_recall=finite_mean([record.get("rougeL_recall") for record in records]),
        entity_similarity=finite_mean([record.get("entity_similarity") for record in records]),
        nli_counts=dict(Counter(record["nli_label"] for record in records if record.get("nli_label"))),
    )
    summary.linguistic_score = linguistic_score(summary.ppl, summary.brunet_index, summary.honore_statistic)
    if summary.linguistic_score is None:
        summary.ls_reason = _ls_reason(records, ppl_enabled, summary)
    return summary


def _ls_reason(records: Sequence[dict[str, Any]], ppl_enabled: bool, summary: SetSummary) -> str:
    if not records:
        return "no items"
    if not ppl_enabled:
        return "perplexity was not computed (--no-ppl)"
    if summary.ppl is None:
        return "no answer had tokens to score for perplexity"
    return "a lexical statistic is missing"
