"""``relearn-local evaluate``: being built; see the stage module."""

from __future__ import annotations

import click

from ..errors import RelearnError


@click.command("evaluate")
def evaluate_command() -> None:
    """(being built)"""
    raise RelearnError("this command is not built yet")


COMMANDS = [evaluate_command]
