"""Two evaluate runs side by side: a metric table, a bar chart PNG and forget answers of both models."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from ..runs import atomic_write_bytes
from .report import EVAL_FILE, SUMMARY_FILE, TABLE_METRICS, format_value, summary_value
from .scoring import FORGET, RETAIN

# Bars drawn in the chart: (label, SUMMARY key stem, set); all lie in [0, 1].
CHART_METRICS = (
    ("KFR", "rate", FORGET),
    ("KRR", "rate", RETAIN),
    ("LS forget", "LS", FORGET),
    ("LS retain", "LS", RETAIN),
    ("ROUGE-L forget", "RougeL_recall", FORGET),
    ("ROUGE-L retain", "RougeL_recall", RETAIN),
)


@dataclass
class ComparedExample:
    """One forget question with the ground truth and each run's answer and label."""

    question: str
    ground_truth: str
    answer_a: str
    answer_b: str
    label_a: Optional[int]
    label_b: Optional[int]


@dataclass
class CompareResult:
    """Metric rows (label, set, value A, value B, change), the chart path and example answers."""

    name_a: str
    name_b: str
    rows: list[tuple[str, str, str, str, str]]
    chart: Path
    examples: list[ComparedExample] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)


def load_run(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read SUMMARY.json and EVAL.json of an evaluate run folder."""
    folder = Path(folder)
    documents = []
    for name in (SUMMARY_FILE, EVAL_FILE):
        path = folder / name
        if not path.is_file():
            raise InputError(f"{folder}: has no {name}; pass the --out folder of a finished evaluate run")
        try:
            documents.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: malformed JSON at line {exc.lineno}") from exc
    return documents[0], documents[1]


def compare_runs(run_a: Path, run_b: Path, chart_path: Optional[Path] = None, examples: int = 3) -> CompareResult:
    """Compare two evaluate runs (for example before and after unlearning) and draw a bar chart PNG.

    The chart goes to ``chart_path``, by default ``compare-<A>-vs-<B>.png``
    in the current folder.
    """
    summary_a, eval_a = load_run(run_a)
    summary_b, eval_b = load_run(run_b)
    name_a, name_b = _run_name(run_a), _run_name(run_b)
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    rows = []
    for label, stem, better in TABLE_METRICS:
        for role in (FORGET, RETAIN):
            value_a = summary_value(summary_a, stem, role)
            value_b = summary_value(summary_b, stem, role)
            shown = "percent" if stem == "coverage" else stem
            rows.append((label, role, format_value(value_a, shown), format_value(value_b, shown),
                         _change(value_a, value_b, stem)))
    target = Path(chart_path) if chart_path else Path.cwd() / f"compare-{_slug(name_a)}-vs-{_slug(name_b)}.png"
    draw_chart(summary_a, summary_b, name_a, name_b, target)
    return CompareResult(
        name_a, name_b, rows, target, _examples(eval_a, eval_b, examples),
        sources={"A": str(run_a), "B": str(run_b), "nli_A": summary_a.get("nli_source"),
                 "nli_B": summary_b.get("nli_source")},
    )


def _run_name(folder: Path) -> str:
    return Path(folder).resolve().name or str(folder)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _change(value_a: Any, value_b: Any, stem: str) -> str:
    if not isinstance(value_a, (int, float)) or not isinstance(value_b, (int, float)):
        return "N/A"
    if stem == "coverage":
        return f"{(value_b - value_a) * 100:+.0f} pp"
    return f"{value_b - value_a:+,.4f}" if stem not in {"PPL", "HS", "BI"} else f"{value_b - value_a:+,.2f}"


def _examples(eval_a: dict[str, Any], eval_b: dict[str, Any], count: int) -> list[ComparedExample]:
    """Forget items present in both runs, matched by question, in run A's order."""
    if count <= 0:
        return []
    items_b = {record["question"]: record for record in eval_b.get(FORGET, {}).get("value_by_index", {}).values()}
    examples = []
    for record in eval_a.get(FORGET, {}).get("value_by_index", {}).values():
        other = items_b.get(record["question"])
        if other is None:
            continue
        examples.append(ComparedExample(record["question"], record["ground_truth"], record["answer"],
                                        other["answer"], record.get("forget_label"), other.get("forget_label")))
        if len(examples) == count:
            break
    return examples


def draw_chart(summary_a: dict[str, Any], summary_b: dict[str, Any], name_a: str, name_b: str, path: Path) -> Path:
    """Draw grouped bars of the [0, 1] metrics of both runs; a missing value is marked N/A instead of a bar."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels = [label for label, _, _ in CHART_METRICS]
    values = [[summary_value(summary, stem, role) for _, stem, role in CHART_METRICS]
              for summary in (summary_a, summary_b)]
    figure, axes = pyplot.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.38
    for offset, (name, series, colour) in enumerate(((name_a, values[0], "#8c8c8c"), (name_b, values[1], "#2b7bba"))):
        positions = [index + (offset - 0.5) * width for index in range(len(labels))]
        heights = [value if value is not None else 0.0 for value in series]
        bars = axes.bar(positions, heights, width, label=name, color=colour)
        for bar, value in zip(bars, series):
            text = "N/A" if value is None else f"{value:.2f}"
            axes.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                          fontsize=8, xytext=(0, 2), textcoords="offset points")
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels)
    # The band above 1.0 contains the value labels and the legend, clear of the bars.
    axes.set_ylim(0, 1.3)
    axes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_ylabel("score (0-1)")
    axes.set_title("KFR: higher = more forgotten;  KRR, LS: higher is better;  ROUGE-L forget: lower is better",
                   fontsize=10)
    axes.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
