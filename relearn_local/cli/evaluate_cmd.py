"""``relearn-local evaluate``: KFR, KRR and LS of a model, or of an answers file, and comparison of two runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from .common import (
    EXISTING_PATH,
    OUT_PATH,
    config_option,
    field_options,
    force_option,
    given_options,
    hide_transformers_bars,
    seed_option,
)

EPILOG = """
\b
Examples:
  relearn-local evaluate --model gemma3-270m --forget examples/forget.json --retain examples/retain.json --limit 5 --out runs/eval-base
  relearn-local evaluate --model gemma3-270m --adapter runs/train --forget examples/forget.json --retain examples/retain.json --out runs/eval-after
  relearn-local evaluate --model ollama:my-unlearned --forget forget.json --retain retain.json --nli-judge ollama:llama3 --out runs/eval-ollama
  relearn-local evaluate --answers forget=gen_forget.json --answers retain=gen_retain.json --nli-model ./deberta-nli --out runs/eval-file
  relearn-local evaluate --compare runs/eval-base runs/eval-after
"""

# click parameter name -> EvaluateConfig field, for the options a user gave.
CONFIG_OPTIONS = {
    "model": "model", "adapter": "adapter", "backend": "backend", "forget": "forget", "retain": "retain",
    "answers": "answers", "question_field": "question_field", "answer_field": "answer_field", "limit": "limit",
    "max_new_tokens": "max_new_tokens", "temperature": "temperature", "seed": "seed", "batch_size": "batch_size",
    "timeout": "timeout", "reference_model": "reference_model", "ppl": "ppl", "nli_model": "nli_model",
    "nli_judge": "nli_judge", "entity_extractor": "entity_extractor", "key_nouns": "key_nouns", "embedding_model": "embedding_model",
    "entity_match_threshold": "entity_match_threshold", "forget_threshold": "forget_threshold",
    "forget_threshold_few_entities": "forget_threshold_few_entities", "retain_threshold": "retain_threshold",
    "force": "force", "out": "out",
}


@click.command("evaluate", epilog=EPILOG)
@click.option("--model", default=None, metavar="MODEL",
              help="Model to evaluate: HF folder, train run or adapter folder, GGUF, 'gemma3-270m' or 'ollama:NAME'.")
@click.option("--adapter", type=EXISTING_PATH, default=None, metavar="DIR",
              help="PEFT adapter or train run folder to apply on --model (or on the base it records).")
@click.option("--backend", type=click.Choice(["auto", "transformers", "llamacpp", "ollama"]), default=None,
              help="Generation backend [default: auto, chosen from --model].")
@click.option("--forget", type=EXISTING_PATH, default=None, metavar="FILE", help="Forget set (scored for KFR).")
@click.option("--retain", type=EXISTING_PATH, default=None, metavar="FILE", help="Retain set (scored for KRR).")
@click.option("--answers", multiple=True, metavar="[SET=]FILE",
              help="Score existing {query, ground_truth, generated_response} records instead of generating; "
                   "repeatable; SET is forget or retain, else each record needs a 'set' field.")
@field_options
@click.option("--out", type=OUT_PATH, default=None, metavar="DIR", help="Run folder for the results.")
@click.option("--limit", type=int, default=None, metavar="N", help="Evaluate only the first N items of each set.")
@click.option("--max-new-tokens", type=int, default=None, help="Maximum new tokens per answer [default: 128].")
@click.option("--temperature", type=float, default=None, help="Sampling temperature [default: 0, greedy].")
@seed_option
@click.option("--batch-size", type=int, default=None, help="Questions generated and scored together [default: 8].")
@click.option("--timeout", type=float, default=None, help="Seconds per generation or judge request.")
@click.option("--reference-model", default=None, metavar="MODEL",
              help="Model scoring answer perplexity [default: gemma3-270m]; keep it fixed across runs.")
@click.option("--ppl/--no-ppl", default=None, help="Compute perplexity; without it LS is N/A [default: on].")
@click.option("--nli-model", type=EXISTING_PATH, default=None, metavar="DIR",
              help="Local HF sequence-classification NLI model folder.")
@click.option("--nli-judge", default=None, metavar="BACKEND:MODEL",
              help="LLM judge for NLI, such as ollama:llama3 or llamacpp:judge.gguf. Without an NLI source "
                   "labels rest on entity overlap alone.")
@click.option("--entity-extractor", type=click.Choice(["auto", "spacy", "rules"]), default=None,
              help="Entity extractor [default: auto, the packaged spaCy pipeline when installed].")
@click.option("--key-nouns/--no-key-nouns", default=None,
              help="Count content nouns as entities too, with the spaCy extractor [default: on].")
@click.option("--embedding-model", type=EXISTING_PATH, default=None, metavar="DIR",
              help="Sentence-transformers folder for entity matching [default: packaged MiniLM].")
@click.option("--entity-match-threshold", type=float, default=None, help="Cosine for an entity match [default: 0.8].")
@click.option("--forget-threshold", type=float, default=None,
              help="Forgotten at entity similarity <= this [default: 0.3].")
@click.option("--forget-threshold-few-entities", type=float, default=None,
              help="Forget threshold when the ground truth has <= 3 entities [default: 0.5].")
@click.option("--retain-threshold", type=float, default=None,
              help="Retained at entity similarity >= this [default: 0.3].")
@click.option("--compare", nargs=2, type=EXISTING_PATH, default=None, metavar="RUN_A RUN_B",
              help="Compare two evaluate run folders side by side and draw a bar chart PNG.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Where --compare writes its PNG [default: ./compare-A-vs-B.png].")
@click.option("--examples", type=int, default=3, show_default=True, help="Forget answers shown by --compare.")
@config_option
@force_option
@click.pass_context
def evaluate_command(ctx: click.Context, compare: Optional[tuple[Path, Path]], chart: Optional[Path],
                     examples: int, config_file: Optional[Path], **_: Any) -> None:
    """Measure forgetting (KFR), retention (KRR) and fluency (LS) of a model, as in the ReLearn paper.

    Answers the forget and retain questions with --model (greedy, new tokens
    only), or scores an --answers file, then writes EVAL.json (per item),
    SUMMARY.json (aggregates) and answers.jsonl to --out and prints a table.
    Items whose judge or extractor failed are N/A and excluded, with the
    coverage shown.
    """
    if compare:
        _compare(compare, chart, examples)
        return
    from ..config import build_config
    from ..evaluate import EvaluateConfig, run_evaluate
    from .common import RichProgress, get_console

    overrides = given_options(ctx, CONFIG_OPTIONS)
    if "answers" in overrides:
        overrides["answers"] = list(overrides["answers"])
    config = build_config(EvaluateConfig, config_file, overrides, section="evaluate")
    if config.out is None:
        raise click.UsageError("pass --out DIR (or --compare RUN_A RUN_B)")
    hide_transformers_bars()
    with RichProgress() as progress:
        result = run_evaluate(config, progress)
    _render(get_console(), result)


def _render(console: Any, result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..evaluate.report import table_rows

    summary = result.summary
    table = Table(title=escape(f"evaluate: {summary.get('model')}"), title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("forget set", justify="right")
    table.add_column("retain set", justify="right")
    for metric, forget, retain in table_rows(summary):
        table.add_row(metric, forget, retain)
    console.print(table)
    console.print(escape(f"NLI: {result.nli_source}; entities: {summary.get('entity_extractor')} "
                         f"matched with {summary.get('embedding_model')}; "
                         f"perplexity: {summary.get('reference_model') or 'off'}"))
    for suffix, name in (("F", "forget"), ("R", "retain")):
        reasons = summary.get(f"na_reasons_{suffix}") or {}
        for reason, count in reasons.items():
            console.print(f"[yellow]{count} {name} item(s) N/A[/yellow]: {escape(reason)}")
        if summary.get(f"LS_{suffix}_reason"):
            console.print(f"[yellow]LS ({name}) N/A[/yellow]: {summary[f'LS_{suffix}_reason']}")
    console.print(f"wrote {result.eval_path}, {result.summary_path} and {result.answers_path} "
                  f"in {summary.get('seconds', {}).get('total', 0):.1f} s")


def _compare(runs: tuple[Path, Path], chart: Optional[Path], examples: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..evaluate import compare_runs
    from .common import get_console

    result = compare_runs(runs[0], runs[1], chart, examples)
    console = get_console()
    table = Table(title=f"{result.name_a}  vs  {result.name_b}", title_justify="left")
    for column, justify in (("metric", "left"), ("set", "left"), (result.name_a, "right"),
                            (result.name_b, "right"), ("change", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in result.rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"NLI: A {result.sources.get('nli_A')}, B {result.sources.get('nli_B')}")
    for example in result.examples:
        console.print(f"\n[bold]Q:[/bold] {escape(example.question)}")
        console.print(f"  [dim]ground truth:[/dim] {escape(example.ground_truth)}")
        for name, answer, label in ((result.name_a, example.answer_a, example.label_a),
                                    (result.name_b, example.answer_b, example.label_b)):
            console.print(f"  [dim]{escape(name)} ({_forgot(label)}):[/dim] {escape(_shorten(answer)) or '(empty)'}")
    console.print(f"\nchart: {result.chart}")


def _shorten(text: str, limit: int = 240) -> str:
    """Collapse whitespace and cut long answers for display; EVAL.json keeps them whole."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _forgot(label: Optional[int]) -> str:
    return {1: "forgotten", 0: "still known"}.get(label, "N/A")  # type: ignore[arg-type]


COMMANDS = [evaluate_command]
