"""report.md and its figures for a finished ``relearn-local run``.

Everything is read back from the stage folders, so the report is the same
whether a stage ran in this invocation or was reused from an earlier one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..runs import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from .stages import PipelineResult, _Context

REPORT_FILE = "report.md"
METRICS_FIGURE = "metrics_before_after.png"
LOSS_FIGURE = "loss_curve.png"

# (label, SUMMARY.json key) of each row in the before/after table.
REPORT_METRICS = (
    ("KFR (forget set)", "KFR"),
    ("KRR (retain set)", "KRR"),
    ("LS forget", "LS_F"),
    ("LS retain", "LS_R"),
    ("ROUGE-L recall forget", "RougeL_recall_F"),
    ("ROUGE-L recall retain", "RougeL_recall_R"),
    ("coverage forget", "coverage_F"),
    ("coverage retain", "coverage_R"),
)


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_report(context: "_Context") -> "PipelineResult":
    """Write report.md, the before/after chart and the loss curve; return the pipeline result."""
    from .stages import PipelineResult

    out = context.folder.path
    before = _read_json(context.sub("eval-before") / "SUMMARY.json")
    after = _read_json(context.sub("eval-after") / "SUMMARY.json")
    export = _read_json(context.sub("export") / "export_summary.json") or {}
    augment = _read_json(context.sub("augment") / "summary.json") or {}
    train = _read_json(context.sub("train") / "train_summary.json") or {}

    figures = []
    loss_source = context.sub("train") / LOSS_FIGURE
    if loss_source.exists():
        shutil.copyfile(loss_source, out / LOSS_FIGURE)
        figures.append(out / LOSS_FIGURE)
    if before and after:
        from ..evaluate.compare import draw_chart

        figures.append(draw_chart(before, after, "before unlearning", "after unlearning", out / METRICS_FIGURE))

    paths = export.get("paths", {})
    name = export.get("name") or ""
    result = PipelineResult(
        out=out,
        report=out / REPORT_FILE,
        stages=list(context.records),
        base_model=context.run.base,
        gguf=Path(paths["gguf"]) if paths.get("gguf") else None,
        modelfile=Path(paths["modelfile"]) if paths.get("modelfile") else None,
        create_command=export.get("commands", {}).get("create", "") or _create_command(name, paths),
        run_command=export.get("commands", {}).get("run", "") or (f"ollama run {name}" if name else ""),
        ollama_created=bool(export.get("ollama_created")),
        before=before,
        after=after,
        figures=figures,
        augment_complete=bool(augment.get("complete", True)),
    )
    text = _render(context, result, augment, train, export)
    atomic_write_text(result.report, text)
    return result


def _create_command(name: str, paths: dict[str, Any]) -> str:
    if not name or not paths.get("modelfile"):
        return ""
    import shlex

    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(paths['modelfile']))}"


def format_metric(value: Any) -> str:
    if value is None:
        return "N/A"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _render(context: "_Context", result: "PipelineResult", augment: dict[str, Any], train: dict[str, Any],
            export: dict[str, Any]) -> str:
    run = context.run
    lines = [
        "# relearn-local report",
        "",
        f"- Base model: `{run.base}`" + (" (facts injected first; see `inject/`)" if run.inject else ""),
        f"- Forget set: `{run.forget}` ({_count(context.forget_path)} items used)",
        f"- Retain set: `{run.retain}` ({_count(context.retain_path)} items used)",
        f"- Run folder: `{result.out}`",
        "",
        "## Results",
        "",
    ]
    lines += _metrics_table(result.before, result.after)
    lines += _sources(result.after or result.before)
    if (result.out / METRICS_FIGURE).exists():
        lines += ["", f"![KFR, KRR and LS before and after]({METRICS_FIGURE})"]
    lines += ["", "## Training", ""]
    lines += _training_lines(augment, train)
    if (result.out / LOSS_FIGURE).exists():
        lines += ["", f"![Loss curve]({LOSS_FIGURE})"]
    lines += ["", "## Answers before and after", ""]
    lines += _examples(context, "forget", run.examples_in_report)
    lines += _examples(context, "retain", run.examples_in_report)
    lines += ["## Serve it with Ollama", ""]
    lines += _serving_lines(result, export)
    lines += ["", "## Stages", "", "| stage | status | wall time | process peak RSS |", "|---|---|---|---|"]
    for record in result.stages:
        peak = "" if record.peak_rss_mb is None else f"{record.peak_rss_mb:.0f} MB"
        seconds = f"{record.seconds:.0f} s" if record.seconds else ""
        if seconds and record.status == "reused":
            seconds += " (earlier run)"
        lines.append(f"| {record.name} | {record.status} | {seconds} | {peak} |")
    lines += ["", "Peak RSS is the maximum of the whole `relearn-local run` process up to the end of each stage; "
              "a stage reused from an earlier run shows the figures measured then."]
    return "\n".join(lines) + "\n"


def _count(path: Path) -> int:
    data = _read_json(path)
    return len(data) if isinstance(data, list) else 0


def _metrics_table(before: Optional[dict], after: Optional[dict]) -> list[str]:
    lines = ["| metric | before unlearning | after unlearning |", "|---|---|---|"]
    for label, key in REPORT_METRICS:
        lines.append(f"| {label} | {format_metric((before or {}).get(key))} | {format_metric((after or {}).get(key))} |")
    lines += [
        "",
        "KFR is the share of forget items whose answer no longer carries the ground truth's facts; KRR the share "
        "of retain items whose answer still does. LS (linguistic score) is the harmonic mean of 1/(1+perplexity), "
        "1/(1+Brunet's index) and Honore's statistic/(1+itself); higher reads more fluently. LS has no fixed "
        "good value and compares only models scored the same way: for scale, the ReLearn authors' evaluation of "
        "their own KnowUnDo run scored 0.12 on the forget set and 0.17 on the retain set. ROUGE-L recall is the "
        "share of the ground truth's words found in the answer, in order; on the forget set, lower is better. "
        "Coverage is the share of items that could be scored; the rest are N/A and left out of KFR and KRR.",
    ]
    return lines


def _sources(summary: Optional[dict]) -> list[str]:
    if not summary:
        return []
    return [
        "",
        f"NLI source: {summary.get('nli_source', 'unknown')}; entities: {summary.get('entity_extractor', 'unknown')}"
        f" matched with {summary.get('embedding_model', 'unknown')}; perplexity under "
        f"`{summary.get('reference_model', 'unknown')}`.",
        "",
        "An item counts as forgotten or kept by comparing the named entities (and key nouns) of the answer with "
        "those of the ground truth; an NLI source, when set, also checks whether the answer still implies the "
        "ground truth." + _answer_limit(summary),
    ]


def _answer_limit(summary: dict[str, Any]) -> str:
    limit = (summary.get("generator") or {}).get("max_new_tokens")
    if not isinstance(limit, int):
        return ""
    return (f" Answers stop after {limit} new tokens, so a long answer can end mid-word "
            "(raise `evaluate: max_new_tokens` to see more).")


def _training_lines(augment: dict[str, Any], train: dict[str, Any]) -> list[str]:
    lines = []
    if augment:
        lines.append(
            f"- Augmentation: {augment.get('records', 'N/A')} training records for "
            f"{augment.get('items_with_accepted_answer', 'N/A')} of {augment.get('items', 'N/A')} forget items"
            + _record_breakdown(augment)
            + ("" if augment.get("complete", True) else " (incomplete: see `augment/summary.json`)")
        )
        for warning in augment.get("warnings", []) or []:
            lines.append(f"  - warning: {warning}")
    if train:
        final = train.get("final") or {}
        final_losses = ", ".join(f"{key} {format_metric(final[key])}" for key in ("forget_ce", "retain_ce", "kl", "loss")
                          if isinstance(final.get(key), (int, float)))
        seconds = train.get("seconds")
        duration = f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else "N/A"
        lines.append(f"- Training: {train.get('steps', 'N/A')} optimizer steps in {duration}"
                     + (f"; last step: {final_losses}" if final_losses else ""))
    return lines or ["(no training summary found)"]


def _record_breakdown(augment: dict[str, Any]) -> str:
    """Return how the training records split into accepted answers, completions and mixed-in pairs."""
    answers = augment.get("answers")
    if not isinstance(answers, dict) or not all(isinstance(value, int) for value in answers.values()):
        return ""
    parts = [f"{sum(answers.values())} accepted answers ({answers.get('template', 0)} of them templates)"]
    completions = augment.get("completions")
    if isinstance(completions, int) and completions:
        parts.append(f"{completions} sentence completions")
    mixed = (augment.get("mix_in") or {}).get("added")
    if isinstance(mixed, int) and mixed:
        parts.append(f"{mixed} mixed-in pairs")
    return ": " + ", ".join(parts)


def _examples(context: "_Context", role: str, count: int) -> list[str]:
    if count <= 0:
        return []
    before = _answers(context.sub("eval-before"), role)
    after = _answers(context.sub("eval-after"), role)
    if not after:
        return []
    lines = [f"### {role.capitalize()} set", ""]
    for key in list(after)[:count]:
        question, truth, answer_after = after[key]
        answer_before = before.get(key, (None, None, "(not evaluated)"))[2]
        lines += [
            f"**Q:** {_inline(question)}",
            "",
            f"- ground truth: {_inline(truth)}",
            f"- before: {_inline(answer_before)}",
            f"- after: {_inline(answer_after)}",
            "",
        ]
    return lines


def _answers(folder: Path, role: str) -> dict[str, tuple[str, str, str]]:
    document = _read_json(folder / "EVAL.json") or {}
    by_index = (document.get(role) or {}).get("value_by_index") or {}
    return {str(item.get("id")): (item.get("question", ""), item.get("ground_truth", ""), item.get("answer", ""))
            for item in by_index.values()}


def _inline(text: Optional[str], limit: int = 400) -> str:
    flat = " ".join((text or "").split())
    flat = flat.replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _serving_lines(result: "PipelineResult", export: dict[str, Any]) -> list[str]:
    if not result.gguf:
        return ["The export stage wrote no GGUF."]
    lines = [f"- GGUF: `{result.gguf}`", f"- Modelfile: `{result.modelfile}`"]
    attempts = export.get("quant_attempts") or []
    if len(attempts) > 1:
        tried = ", ".join(f"{attempt['quant']} {'passed' if attempt['passed'] else 'failed'}" for attempt in attempts)
        lines.append(f"- Output type: {export.get('quant')}, the first that passed of those tried ({tried}); "
                     "a type fails when rounding its weights brings back a forgotten fact or breaks parity")
    parity = export.get("parity") or {}
    if parity.get("verdict"):
        lines.append(f"- GGUF parity with the merged model: {parity['verdict']}")
    if parity and not parity.get("skipped") and not parity.get("passed"):
        lines += ["", "**Do not serve this GGUF**: it failed the parity check (see export/export_summary.json). "
                  "Export again with a larger output type, such as `--quant q8_0`."]
        return lines
    if result.ollama_created:
        lines += ["", "The model was created in Ollama. Run it with:", "", f"    {result.run_command}"]
    else:
        lines += ["", "Ollama was not reachable from this run. On a machine with Ollama:", "",
                  f"    {result.create_command}", f"    {result.run_command}"]
    return lines
