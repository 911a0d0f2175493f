"""``relearn-local serve``: being built; see the stage module."""

from __future__ import annotations

import click

from ..errors import RelearnError


@click.command("serve")
def serve_command() -> None:
    """(being built)"""
    raise RelearnError("this command is not built yet")


COMMANDS = [serve_command]
