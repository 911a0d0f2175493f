"""``relearn-local train`` and ``inject``: being built; see the stage module."""

from __future__ import annotations

import click

from ..errors import RelearnError


@click.command("inject")
def inject_command() -> None:
    """(being built)"""
    raise RelearnError("this command is not built yet")


@click.command("train")
def train_command() -> None:
    """(being built)"""
    raise RelearnError("this command is not built yet")


COMMANDS = [inject_command, train_command]
