"""The files of an evaluate run and the rows of its table.

- ``EVAL.json``: per set, ``agg_value`` (KFR or KRR) and ``value_by_index``
  with one record per item, keyed by position as in OpenUnlearning's
  ``*_EVAL.json``. Record fields use the ReLearn authors' names (``ppl``,
  ``BI``, ``HS``, ``ttr``, ``nli_label``, ``entity_similarity``,
  ``forget_label`` / ``retention_label``, ``rouge1_recall``, ...).
- ``SUMMARY.json``: a flat mapping of aggregate name to value, as in
  OpenUnlearning's ``*_SUMMARY.json``, with the authors' key names (``KFR``,
  ``KRR``, ``PPL_F``, ``BI_R``, ``RougeL_recall_F``, ...) plus ``LS_F`` and
  ``LS_R``, coverage and N/A counts, and where the numbers came from.
- ``answers.jsonl``: one ``{set, id, query, ground_truth, generated_response}``
  line per item, which ``--answers`` reads back.

A value that could not be computed is ``null`` and its reason is stored next
to it; every number written is finite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..data import write_jsonl
from ..runs import atomic_write_json
from .scoring import FORGET, RETAIN, SetSummary

EVAL_FILE = "EVAL.json"
SUMMARY_FILE = "SUMMARY.json"
ANSWERS_FILE = "answers.jsonl"
SUFFIX = {FORGET: "F", RETAIN: "R"}

# (label, SUMMARY.json key stem, higher is better) in table order; stems get _F / _R appended.
TABLE_METRICS: tuple[tuple[str, str, Optional[bool]], ...] = (
    ("KFR (forget) / KRR (retain)", "rate", True),
    ("coverage (items judged)", "coverage", True),
    ("LS (linguistic score)", "LS", True),
    ("PPL (reference model)", "PPL", False),
    ("Brunet's index", "BI", False),
    ("Honore's statistic", "HS", True),
    ("ROUGE-1 recall", "Rouge1_recall", None),
    ("ROUGE-L recall", "RougeL_recall", None),
    ("entity similarity", "Entity_similarity", None),
)


def finite_or_none(value: Any) -> Any:
    """Return ``value`` unless it is a non-finite float, which becomes None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_summary(sets: Mapping[str, Optional[SetSummary]], details: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten the per-set aggregates into SUMMARY.json's mapping."""
    forget = sets.get(FORGET)
    retain = sets.get(RETAIN)
    summary: dict[str, Any] = {
        "KFR": forget.rate if forget else None,
        "KRR": retain.rate if retain else None,
    }
    for role, aggregate in ((FORGET, forget), (RETAIN, retain)):
        suffix = SUFFIX[role]
        if aggregate is None:
            summary[f"items_{suffix}"] = 0
            continue
        summary.update({
            f"LS_{suffix}": aggregate.linguistic_score,
            f"PPL_{suffix}": aggregate.ppl,
            f"BI_{suffix}": aggregate.brunet_index,
            f"HS_{suffix}": aggregate.honore_statistic,
            f"TTR_{suffix}": aggregate.root_ttr,
            f"Rouge1_recall_{suffix}": aggregate.rouge1_recall,
            f"RougeL_recall_{suffix}": aggregate.rougeL_recall,
            f"Entity_similarity_{suffix}": aggregate.entity_similarity,
            f"items_{suffix}": aggregate.items,
            f"judged_{suffix}": aggregate.judged,
            f"na_{suffix}": aggregate.not_applicable,
            f"coverage_{suffix}": aggregate.coverage,
            f"na_reasons_{suffix}": aggregate.na_reasons,
            f"ppl_items_{suffix}": aggregate.ppl_items,
            f"nli_counts_{suffix}": aggregate.nli_counts,
        })
        if aggregate.ls_reason:
            summary[f"LS_{suffix}_reason"] = aggregate.ls_reason
    summary.update(details)
    return {key: finite_or_none(value) for key, value in summary.items()}


def build_eval(records: Sequence[dict[str, Any]], sets: Mapping[str, Optional[SetSummary]]) -> dict[str, Any]:
    """Group per-item records by set into EVAL.json's layout."""
    document: dict[str, Any] = {}
    for role in (FORGET, RETAIN):
        aggregate = sets.get(role)
        if aggregate is None:
            continue
        rows = [record for record in records if record["set"] == role]
        document[role] = {
            "agg_value": aggregate.rate,
            "value_by_index": {str(position): _clean_record(record) for position, record in enumerate(rows)},
        }
    return document


def _clean_record(record: dict[str, Any]) -> dict[str, Any]:
    return {key: finite_or_none(value) for key, value in record.items()}


def answer_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of answers.jsonl, readable again with --answers."""
    return [
        {
            "set": record["set"],
            "id": record["id"],
            "query": record["question"],
            "ground_truth": record["ground_truth"],
            "generated_response": record["answer"],
            **({"generation": record["generation"]} if record.get("generation") else {}),
        }
        for record in records
    ]


def write_report(folder: Path, records: Sequence[dict[str, Any]], sets: Mapping[str, Optional[SetSummary]],
                 details: Mapping[str, Any]) -> dict[str, Any]:
    """Write EVAL.json, SUMMARY.json and answers.jsonl into ``folder``; return the summary."""
    summary = build_summary(sets, details)
    atomic_write_json(folder / EVAL_FILE, build_eval(records, sets))
    atomic_write_json(folder / SUMMARY_FILE, summary)
    write_jsonl(folder / ANSWERS_FILE, answer_rows(records))
    return summary


def summary_value(summary: Mapping[str, Any], stem: str, role: str) -> Optional[float]:
    """Read one table cell's number from SUMMARY.json (``rate`` means KFR or KRR)."""
    if stem == "rate":
        return summary.get("KFR" if role == FORGET else "KRR")
    return summary.get(f"{stem}_{SUFFIX[role]}")


def format_value(value: Any, stem: str = "") -> str:
    """Render a metric for a table: N/A for None, fixed decimals otherwise."""
    if value is None:
        return "N/A"
    if stem in {"PPL", "HS", "BI"}:
        return f"{value:,.2f}"
    if stem == "percent":
        return f"{value:.0%}"
    return f"{value:.4f}"


def table_rows(summary: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, forget value, retain value) rows for the CLI table, N/A shown as such."""
    rows = []
    for label, stem, _ in TABLE_METRICS:
        cells = []
        for role in (FORGET, RETAIN):
            if not summary.get(f"items_{SUFFIX[role]}"):
                cells.append("-")
                continue
            if stem == "coverage":
                suffix = SUFFIX[role]
                cells.append(f"{summary.get(f'judged_{suffix}', 0)}/{summary.get(f'items_{suffix}')}"
                             f" ({format_value(summary.get(f'coverage_{suffix}'), 'percent')})")
                continue
            cells.append(format_value(summary_value(summary, stem, role), stem))
        rows.append((label, cells[0], cells[1]))
    return rows
