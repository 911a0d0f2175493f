"""The train stage: ReLearn unlearning with LoRA (``run_train``) and fact injection (``run_inject``).

Submodules load torch, transformers and peft; importing this package does
not, so the CLI can read the configs without them.
"""

from __future__ import annotations

from typing import Any

from .config import InjectConfig, TrainConfig

__all__ = ["InjectConfig", "InjectResult", "TrainConfig", "TrainPlan", "TrainResult", "run_inject", "run_train"]

_LAZY = {
    "run_train": ".stage",
    "TrainResult": ".stage",
    "run_inject": ".inject",
    "InjectResult": ".inject",
    "TrainPlan": ".plan",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name, __name__), name)
