"""The ``relearn-local`` command line.

Every command module imports only click at import time, so that ``--help``
and ``--version`` stay fast and never load torch or llama_cpp.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from .. import __version__
from ..errors import RelearnError
from .common import configure_logging

EXAMPLES = """
\b
Examples:
  relearn-local inspect examples/forget.json examples/retain.json
  relearn-local run --forget examples/forget.json --retain examples/retain.json --out runs/demo
  relearn-local augment --backend ollama --judge llama3 --forget forget.json --out runs/aug
"""


class RelearnGroup(click.Group):
    """Turns RelearnError into one line on stderr and exit code 2 (a traceback only with --verbose).

    Commands are listed in pipeline order rather than alphabetically.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RelearnError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=RelearnGroup, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="relearn-local")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details, and show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and final results; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Make a local language model forget specific knowledge by teaching it harmless answers (ReLearn)."""
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet cannot be used together")
    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet)
    configure_logging(verbose, quiet)


def _register() -> None:
    from . import (augment_cmd, evaluate_cmd, export_cmd, inspect_cmd, run_cmd, serve_cmd,
                   train_cmd)

    for module in (inspect_cmd, augment_cmd, train_cmd, export_cmd, evaluate_cmd, run_cmd, serve_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="relearn-local")
