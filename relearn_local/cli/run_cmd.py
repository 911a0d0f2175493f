"""``relearn-local run``: being built; see the stage module."""

from __future__ import annotations

import click

from ..errors import RelearnError


@click.command("run")
def run_command() -> None:
    """(being built)"""
    raise RelearnError("this command is not built yet")


COMMANDS = [run_command]
