"""Options shared by the stage commands, config assembly, and rich rendering of progress.

Command callbacks only parse options, build the stage config, call the stage
and render its result; the helpers here keep that uniform.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import click

from ..progress import ProgressEvent

F = TypeVar("F", bound=Callable[..., Any])

EXISTING_PATH = click.Path(exists=True, path_type=Path)
OUT_PATH = click.Path(file_okay=False, path_type=Path)


def base_option(func: F) -> F:
    return click.option(
        "--base",
        default=None,
        metavar="MODEL",
        help="Base model: 'gemma3-270m' (embedded default), a local HF folder, a local GGUF, or a hub id.",
    )(func)


def forget_option(required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--forget", type=EXISTING_PATH, required=required, metavar="FILE",
        help="Forget set: question/answer pairs to unlearn (JSON, JSON Lines, CSV or a saved dataset).",
    )


def retain_option(required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--retain", type=EXISTING_PATH, required=required, metavar="FILE",
        help="Retain set: question/answer pairs the model must keep knowing.",
    )


def out_option(func: F) -> F:
    return click.option("--out", type=OUT_PATH, required=True, metavar="DIR", help="Run folder for outputs.")(func)


def config_option(func: F) -> F:
    return click.option(
        "--config", "config_file", type=EXISTING_PATH, default=None, metavar="FILE",
        help="YAML config; values apply over defaults and under flags.",
    )(func)


def seed_option(func: F) -> F:
    return click.option("--seed", type=int, default=None, help="Random seed [default: 0].")(func)


def force_option(func: F) -> F:
    return click.option(
        "--force", is_flag=True, default=False, help="Overwrite a finished run in --out instead of refusing."
    )(func)


def field_options(func: F) -> F:
    """--question-field/--answer-field, overriding field detection."""
    func = click.option("--answer-field", default=None, metavar="NAME", help="Record field holding the answer.")(func)
    func = click.option("--question-field", default=None, metavar="NAME", help="Record field holding the question.")(func)
    return func


def given_options(ctx: click.Context, names: Mapping[str, str] | list[str]) -> dict[str, Any]:
    """Return {config field: value} for the options the user actually gave (command line or environment).

    ``names`` maps click parameter names to config field names; a list uses
    the same name for both.
    """
    mapping = dict(names) if isinstance(names, Mapping) else {name: name for name in names}
    given: dict[str, Any] = {}
    for parameter, field_name in mapping.items():
        source = ctx.get_parameter_source(parameter)
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            given[field_name] = ctx.params[parameter]
    return given


def is_quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("quiet"))


def get_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


class RichProgress:
    """A ProgressCallback that draws one rich bar per task on stderr; silent with --quiet."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = (not is_quiet()) if enabled is None else enabled
        self._progress = None
        self._started = False
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "RichProgress":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=get_console(stderr=True),
                transient=False,
            )
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Started with the first bar: a command that fails in its checks then
        # prints its error without the blank line an empty display leaves.
        if self._progress is not None and self._started:
            self._progress.stop()

    def remove_tasks(self, keep: tuple[str, ...] = ()) -> None:
        """Drop every bar except those of the tasks in ``keep``, so a new stage starts with its own bars only."""
        if self._progress is None:
            return
        for task, task_id in list(self._tasks.items()):
            if task not in keep:
                self._progress.remove_task(task_id)
                del self._tasks[task]

    def __call__(self, event: ProgressEvent) -> None:
        if self._progress is None:
            return
        metrics = "  ".join(f"{key} {_format_metric(value)}" for key, value in event.metrics.items())
        task_id = self._tasks.get(event.task)
        if task_id is None:
            if not self._started:
                self._progress.start()
                self._started = True
            task_id = self._progress.add_task(event.description or event.task, total=event.total, metrics=metrics)
            self._tasks[event.task] = task_id
        update: dict[str, Any] = {"completed": event.completed, "metrics": metrics}
        if event.total is not None:
            update["total"] = event.total
        if event.description:
            update["description"] = event.description
        self._progress.update(task_id, **update)
        if event.done:
            self._progress.update(task_id, completed=event.total if event.total is not None else event.completed)


def hide_transformers_bars() -> None:
    """Turn off transformers' own tqdm bars (loading and writing weights), which would break the rich bars."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Send package logs to stderr: WARNING by default, INFO with --verbose, ERROR with --quiet."""
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    package_logger = logging.getLogger("relearn_local")
    for handler in list(package_logger.handlers):
        if getattr(handler, "_relearn_console", False):
            package_logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler._relearn_console = True  # type: ignore[attr-defined]
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
