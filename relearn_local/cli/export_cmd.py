"""``relearn-local export``: being built; see the stage module."""

from __future__ import annotations

import click

from ..errors import RelearnError


@click.command("export")
def export_command() -> None:
    """(being built)"""
    raise RelearnError("this command is not built yet")


COMMANDS = [export_command]
