"""``relearn-local run``: every stage in order, with one progress view and a report at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from .common import (EXISTING_PATH, OUT_PATH, RichProgress, config_option, field_options, force_option,
                     get_console, given_options, hide_transformers_bars, seed_option)

EPILOG = """
\b
Examples:
  relearn-local run --forget examples/forget.json --retain examples/retain.json --out runs/demo --inject
  relearn-local run --forget forget.json --retain retain.json --base ./my-hf-model --out runs/mine --name my-unlearned
  relearn-local run --config examples/demo.yaml --forget examples/forget.json --retain examples/retain.json --out runs/demo

\b
Stages, each in a subfolder of --out: inject (with --inject), eval-before,
augment, train, export, eval-after. Run the same command again to continue a
stopped run at the stage where it stopped.
"""

CONFIG_OPTIONS = ["forget", "retain", "out", "base", "inject", "name", "question_field", "answer_field",
                  "forget_limit", "retain_limit", "ollama", "ollama_host", "evaluate_before", "seed", "force"]


@click.command("run", epilog=EPILOG)
@click.option("--forget", type=EXISTING_PATH, default=None, metavar="FILE", help="Forget set: the facts to forget.")
@click.option("--retain", type=EXISTING_PATH, default=None, metavar="FILE", help="Retain set: the facts to keep.")
@click.option("--out", type=OUT_PATH, default=None, metavar="DIR", help="Run folder.")
@click.option("--base", default=None, metavar="MODEL",
              help="Base model: 'gemma3-270m' (embedded default), an HF folder, a GGUF or a hub id.")
@click.option("--inject/--no-inject", default=None,
              help="Teach the base the forget and retain facts first (for a base that never knew them).")
@click.option("--name", default=None, help="Ollama model name [default: relearned-<family>].")
@field_options
@click.option("--forget-limit", type=int, default=None, metavar="N", help="Use only the first N forget items.")
@click.option("--retain-limit", type=int, default=None, metavar="N", help="Use only the first N retain items.")
@click.option("--ollama", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Use Ollama for augment and 'ollama create' [default: auto, when it responds].")
@click.option("--ollama-host", default=None, metavar="HOST", help="Ollama server [default: $OLLAMA_HOST].")
@click.option("--evaluate-before/--no-evaluate-before", default=None,
              help="Evaluate the model before unlearning too [default: on].")
@config_option
@seed_option
@force_option
@click.pass_context
def run_command(ctx: click.Context, config_file: Optional[Path], **_: Any) -> None:
    """Unlearn the forget set end to end and write DIR/report.md.

    Runs inject (optional), evaluate before, augment, train, export (with
    'ollama create' when Ollama responds) and evaluate after.
    """
    from ..pipeline import load_run_config, run_pipeline

    resolved = load_run_config(config_file, given_options(ctx, CONFIG_OPTIONS))
    console = get_console(stderr=True)
    hide_transformers_bars()
    try:
        with RichProgress() as progress:
            result = run_pipeline(resolved, progress,
                                  on_stage=lambda name, status: _announce(console, progress, name, status))
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to continue at the stage where it stopped", err=True)
        raise click.exceptions.Exit(130) from None
    _render(result)


def _announce(console: Any, progress: Any, name: str, status: str) -> None:
    from .common import is_quiet

    if status == "start":
        progress.remove_tasks(keep=("pipeline",))
    if is_quiet():
        return
    if status == "start":
        console.print(f"[bold]stage {name}[/bold]")
    elif status == "reused":
        console.print(f"  {name}: finished earlier, reused")


def _render(result: Any) -> None:
    from rich.table import Table

    console = get_console()
    table = Table(title="relearn-local run", title_justify="left")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    from ..pipeline.report import REPORT_METRICS, format_metric

    for label, key in REPORT_METRICS[:4]:
        table.add_row(label, format_metric((result.before or {}).get(key)), format_metric((result.after or {}).get(key)))
    console.print(table)
    if not result.augment_complete:
        console.print("[yellow]augmentation was incomplete; see augment/summary.json[/yellow]")
    # Paths and shell commands are printed unwrapped, so they can be copied from a narrow terminal or a log.
    console.print(f"Report: {result.report}", soft_wrap=True)
    if result.ollama_created:
        console.print(f"Serve it: {result.run_command}", soft_wrap=True)
    elif result.create_command:
        console.print(f"On a machine with Ollama: {result.create_command} && {result.run_command}", soft_wrap=True)


COMMANDS = [run_command]
