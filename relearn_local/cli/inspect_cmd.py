"""``relearn-local inspect``: check forget and retain files before using them."""

from __future__ import annotations

from pathlib import Path

import click

from .common import field_options, get_console

DEFAULT_MAX_PROBLEMS = 20


@click.command(
    "inspect",
    epilog="""
\b
Examples:
  relearn-local inspect examples/forget.json examples/retain.json
  relearn-local inspect data.csv --question-field prompt --answer-field completion
  relearn-local inspect forget.json --max-problems 0
""",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@field_options
@click.option(
    "--max-problems",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_PROBLEMS,
    show_default=True,
    help="Maximum number of problems listed per file. The rest are counted in one line, and 0 lists all.",
)
def inspect_command(
    files: tuple[Path, ...], question_field: str | None, answer_field: str | None, max_problems: int
) -> None:
    """Report format, record count, fields, lengths, duplicates and problems of each FILE.

    Lengths and duplicates cover the records that load, even when others have
    errors. A question that appears in more than one FILE is a warning for
    each of them, because a question in both the forget and the retain set
    gives training contradictory targets. Warnings do not change the exit code.

    Exits 0 when every file is usable, 2 when any is not.
    """
    from ..data import inspect_files

    console = get_console()
    reports = inspect_files(files, question_field, answer_field)
    for report in reports:
        if report.question_field is None or report.record_count == 0:
            _echo_file_errors(report, max_problems)
        else:
            _print_report(console, report, max_problems)
    if any(not report.usable for report in reports):
        raise SystemExit(2)


def _echo_file_errors(report, max_problems: int) -> None:
    """Print one line per problem of a file that has nothing to tabulate, with the path in each line."""
    if report.format is not None and report.record_count == 0:
        click.echo(f"error: {report.path}: the set is empty (no records)", err=True)
        return
    listed, unlisted = _split_problems(report.problems, max_problems)
    for problem in listed:
        click.echo(f"{_severity(problem)}: {problem.describe(report.path)}", err=True)
    if unlisted:
        click.echo(f"{report.path}: {_more_problems_line(unlisted)}", err=True)


def _print_report(console, report, max_problems: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..data import format_count

    table = Table(title=escape(str(report.path)), show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("format", report.format)

    records = str(report.record_count)
    if report.pair_count < report.record_count:
        records += f" ({report.pair_count} loaded as question/answer pairs)"
    table.add_row("records", records)
    table.add_row("fields", escape(f"question={report.question_field!r} answer={report.answer_field!r}"))
    for label, stats in (("question length", report.question_lengths), ("answer length", report.answer_lengths)):
        table.add_row(label, _length_text(stats, report.pair_count))
    table.add_row("duplicates", _duplicates_text(report))

    listed, unlisted = _split_problems(report.problems, max_problems)
    lines = [f"{_severity(problem)}: {problem.describe()}" for problem in listed]
    if unlisted:
        lines.append(_more_problems_line(unlisted))
    table.add_row("problems", escape("\n".join(lines)) if lines else "none")

    errors = sum(problem.fatal for problem in report.problems)
    warnings = len(report.problems) - errors
    if report.usable:
        status = "[green]usable[/green]"
        if warnings:
            status += f" ({format_count(warnings, 'warning')})"
    else:
        status = f"[red]not usable[/red] ({format_count(errors, 'error')})"
    table.add_row("status", status)
    console.print(table)


def _length_text(stats, pair_count: int) -> str:
    if pair_count == 0:
        return "n/a (no record loaded)"
    return (
        f"{stats.min_chars}-{stats.max_chars} characters (median {stats.median_chars:g}), "
        f"{stats.mean_words:.1f} words on average"
    )


def _duplicates_text(report) -> str:
    from ..data import describe_repeats

    return "; ".join(describe_repeats(report.duplicate_pairs, report.conflicting_repeats)) or "none"


def _severity(problem) -> str:
    return "error" if problem.fatal else "warning"


def _split_problems(problems, max_problems: int):
    """Return (listed, unlisted): the first ``max_problems`` problems and the rest, with 0 listing all."""
    if max_problems == 0:
        return list(problems), []
    return list(problems[:max_problems]), list(problems[max_problems:])


def _more_problems_line(unlisted) -> str:
    from ..data import format_count

    errors = sum(problem.fatal for problem in unlisted)
    warnings = len(unlisted) - errors
    return (
        f"... and {format_count(len(unlisted), 'more problem')} "
        f"({format_count(errors, 'error')}, {format_count(warnings, 'warning')}); "
        "pass --max-problems 0 to list all"
    )


COMMANDS = [inspect_command]
