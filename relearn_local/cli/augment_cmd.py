"""``relearn-local augment``: being built; see the stage module."""

from __future__ import annotations

import click

from ..errors import RelearnError


@click.command("augment")
def augment_command() -> None:
    """(being built)"""
    raise RelearnError("this command is not built yet")


COMMANDS = [augment_command]
