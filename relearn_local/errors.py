"""Errors that the CLI reports as one line and exit code 2.

Library code raises these for problems a user can fix (bad input, a missing
file, an unavailable backend). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RelearnError(Exception):
    """A problem the user can fix; the message says what failed and what to do."""

    exit_code = 2


class InputError(RelearnError):
    """A forget, retain or other input file is missing, unreadable or invalid."""


class ConfigError(RelearnError):
    """An option or config file value is invalid."""


class ModelError(RelearnError):
    """A base model cannot be found, resolved or loaded."""


class BackendError(RelearnError):
    """A generation backend (Ollama, llama.cpp) is unavailable or misconfigured."""


class RunFolderError(RelearnError):
    """An output folder cannot be used for this run as it stands."""


class TrainingError(RelearnError):
    """Training stopped on a condition the user must address (non-finite loss, too little data)."""


class ExportError(RelearnError):
    """Export tooling is missing or a conversion step failed."""
