"""The augment stage: question variants, safe answer rewrites and a judged leak check, on local models.

Entry point: ``run_augment(AugmentConfig(...), progress=None) -> AugmentResult``.
Names are imported on first use, so that the CLI can read the option tables
in ``augment.config`` without loading the pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AugmentConfig": ".config",
    "RECORD_VARIANTS": ".config",
    "VARIANT_TYPES": ".config",
    "run_augment": ".pipeline",
    "AUGMENTED_FILE": ".pipeline",
    "SUMMARY_FILE": ".pipeline",
    "AugmentResult": ".summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module_name, __name__), name)
