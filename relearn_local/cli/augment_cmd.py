"""``relearn-local augment``: build the augmented forget set with a writer model, a judge and the leak guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from ..augment.config import BACKEND_CHOICES, FALLBACK_CHOICES
from .common import (EXISTING_PATH, config_option, field_options, force_option, forget_option, get_console,
                     given_options, is_quiet, out_option, seed_option)

EPILOG = """
\b
Examples:
  relearn-local augment --forget examples/forget.json --out runs/aug
  relearn-local augment --backend llamacpp --forget examples/forget.json --out runs/aug
  relearn-local augment --backend ollama --judge llama3 --forget forget.json --out runs/aug
  relearn-local augment --backend ollama --model qwen2.5:7b --judge llama3 --concurrency 4 \\
      --mix-in generic_qa.json --mix-ratio 0.5 --forget forget.json --out runs/aug

\b
Exit codes: 0 when every item was augmented, 1 when items failed or no
record was accepted (see summary.json), 2 on invalid input or an
unavailable backend.
"""

# click parameter name -> AugmentConfig field, for the options a user gave.
OPTION_FIELDS = {
    "forget": "forget", "out": "out", "question_field": "question_field", "answer_field": "answer_field",
    "backend": "backend", "model": "model", "judge": "judge", "judge_backend": "judge_backend",
    "ollama_host": "ollama_host", "timeout": "timeout", "retries": "retries", "rounds": "rounds",
    "concurrency": "concurrency", "seed": "seed", "temperature": "temperature", "max_tokens": "max_tokens",
    "mix_in": "mix_in", "mix_ratio": "mix_ratio", "completions": "completions", "fallback": "fallback",
    "allow_sensitive_spans_in_questions": "allow_sensitive_spans_in_questions", "force": "force",
}


@click.command("augment", epilog=EPILOG)
@forget_option()
@out_option
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="Writer backend; auto uses Ollama when it responds, else the embedded llama.cpp model.")
@click.option("--model", default=None, metavar="NAME",
              help="Writer model: an Ollama model name, or a GGUF path for llamacpp. [default: the judge model, "
                   "else llama3.2 on Ollama, else the embedded Gemma 3 270M]")
@click.option("--judge", default=None, metavar="NAME", help="Judge model. [default: the writer model]")
@click.option("--judge-backend", type=click.Choice([name for name in BACKEND_CHOICES if name != "auto"]),
              default=None, help="Judge backend. [default: the writer's backend]")
@click.option("--ollama-host", envvar="OLLAMA_HOST", default=None, metavar="HOST",
              help="Ollama server, such as 127.0.0.1:11434. [default: $OLLAMA_HOST, else 127.0.0.1:11434]")
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Seconds one request may take per try. [default: 120]")
@click.option("--retries", type=int, default=None, help="Extra tries after a connection error, timeout or 5xx. [default: 2]")
@click.option("--rounds", type=int, default=None, help="Rewrite rounds for rejected answers. [default: 3]")
@click.option("--concurrency", type=int, default=None, help="Forget items processed at once. [default: 2]")
@seed_option
@click.option("--temperature", type=float, default=None, help="Sampling temperature. [default: 0]")
@click.option("--max-tokens", type=int, default=None, help="Output-token limit of every request. [default: 512]")
@click.option("--fallback", type=click.Choice(FALLBACK_CHOICES), default=None,
              help="When template answers are judged for questions the writer fails. [default: early]")
@click.option("--mix-in", type=EXISTING_PATH, default=None, metavar="FILE",
              help="Local file of generic question/answer pairs to mix in.")
@click.option("--mix-ratio", type=float, default=None, metavar="R",
              help="Mix-in pairs per accepted forget record, such as 0.5.")
@click.option("--completions/--no-completions", default=None,
              help="Add sentence-completion samples made from accepted answers. [default: on]")
@click.option("--allow-sensitive-spans-in-questions", is_flag=True, default=None,
              help="Skip the leak guard on question variants (answers are always checked).")
@click.option("--no-cache", is_flag=True, default=False,
              help="Ask every request again instead of reusing cached replies (the cache is refreshed).")
@config_option
@force_option
@field_options
@click.pass_context
def augment_command(ctx: click.Context, config_file: Optional[Path], no_cache: bool, **_: Any) -> None:
    """Write question variants and safe answers for each forget item, judged and leak-checked.

    For every forget item: four question variants (rephrase, context, noise,
    reverse), a harmless answer for the original question and each variant,
    a judge verdict on each answer, and a deterministic leak guard that
    rejects any answer repeating an email, phone number, number, date,
    address, name or detail of the original answer. Writes DIR/augmented.jsonl
    (accepted records only) and DIR/summary.json.
    """
    from ..augment import AugmentConfig, run_augment
    from ..config import build_config
    from .common import RichProgress

    overrides = given_options(ctx, OPTION_FIELDS)
    if no_cache:
        overrides["cache"] = False
    config = build_config(AugmentConfig, config_file, overrides, section="augment")
    with RichProgress() as progress:
        result = run_augment(config, progress=progress)
    _render(result)
    if result.exit_code:
        ctx.exit(result.exit_code)


def _render(result: Any) -> None:
    from rich.table import Table

    summary = result.summary
    console = get_console()
    if not is_quiet():
        table = Table(title="Augmented forget set", title_justify="left")
        for header in ("variant", "questions", "accepted", "rejected", "writer answers", "template answers",
                       "template questions"):
            table.add_column(header, justify="left" if header == "variant" else "right")
        for variant, row in summary["per_variant"].items():
            table.add_row(variant, *(str(row[key]) for key in ("questions", "accepted", "rejected", "writer_answers",
                                                               "template_answers", "template_questions")))
        console.print(table)
        console.print(_totals_table(summary))
    if summary["failures"]:
        failures = Table(title="Failed forget items", title_justify="left")
        failures.add_column("item")
        failures.add_column("reason")
        for item_id, reason in summary["failures"].items():
            failures.add_row(item_id, reason or "")
        console.print(failures)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if result.augmented_path is not None:
        state = "complete" if result.complete else "INCOMPLETE"
        console.print(f"augmented forget set ({state}): {result.augmented_path} ({summary['records']} records)")
    else:
        console.print(f"no augmented forget set written; every item failed (see {result.summary_path})")


def _totals_table(summary: dict[str, Any]):
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("items", summary["items"]),
        ("items with an accepted answer", summary["items_with_accepted_answer"]),
        ("failed items", len(summary["failed_items"])),
        ("guard overrules (judge passed, guard rejected)", summary["guard_overrules"]),
        ("judge errors", summary["judge_errors"]),
        ("LLM calls (per item)", f"{summary['llm_calls']} ({summary['llm_calls_per_item']})"),
        ("cached replies", summary["cached_replies"]),
        ("tokens (prompt / output)", f"{summary['prompt_tokens']} / {summary['completion_tokens']}"),
        ("wall time", f"{summary['wall_seconds']:.1f} s"),
    ]
    for label, value in rows:
        table.add_row(label, str(value))
    return table


COMMANDS = [augment_command]
