"""``relearn-local inspect``: check forget and retain files before using them."""

from __future__ import annotations

from pathlib import Path

import click

from .common import field_options, get_console


@click.command(
    "inspect",
    epilog="""
\b
Examples:
  relearn-local inspect examples/forget.json examples/retain.json
  relearn-local inspect data.csv --question-field prompt --answer-field completion
""",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@field_options
def inspect_command(files: tuple[Path, ...], question_field: str | None, answer_field: str | None) -> None:
    """Report format, record count, fields, lengths, duplicates and problems of each FILE.

    Exits 0 when every file is usable, 2 when any is not.
    """
    from ..data import inspect_file

    console = get_console()
    unusable = 0
    for path in files:
        report = inspect_file(path, question_field, answer_field)
        if not report.usable:
            unusable += 1
            fatal = [problem for problem in report.problems if problem.fatal] or report.problems
            if report.format is not None and report.record_count == 0:
                click.echo(f"error: {path}: the set is empty (no records)", err=True)
                continue
            for problem in fatal:
                click.echo(f"error: {problem.describe(path)}", err=True)
            continue
        _print_report(console, report)
    if unusable:
        raise SystemExit(2)


def _print_report(console, report) -> None:
    from rich.table import Table

    table = Table(title=str(report.path), show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("format", report.format)
    table.add_row("records", str(report.record_count))
    table.add_row("fields", f"question={report.question_field!r} answer={report.answer_field!r}")
    for label, stats in (("question length", report.question_lengths), ("answer length", report.answer_lengths)):
        table.add_row(
            label,
            f"{stats.min_chars}-{stats.max_chars} characters (median {stats.median_chars:g}), "
            f"{stats.mean_words:.1f} words on average",
        )
    table.add_row("duplicates", f"{report.duplicate_pairs} repeated pairs, {report.duplicate_questions} repeated questions")
    warnings = [problem.describe(report.path) for problem in report.problems]
    table.add_row("problems", "\n".join(warnings) if warnings else "none")
    table.add_row("status", "[green]usable[/green]")
    console.print(table)


COMMANDS = [inspect_command]
