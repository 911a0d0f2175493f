"""The reference model for the KL and NPO terms: the training model with its adapter disabled, or a frozen copy."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ..errors import BackendError
from .losses import ModelView

logger = logging.getLogger(__name__)


class AdapterOffReference:
    """Runs the training model itself with the LoRA adapter switched off: the base model, with no second copy.

    The pass runs in eval mode and without gradients, so dropout never makes
    the reference differ from the base model.
    """

    description = "adapter-off"

    def __init__(self, model: Any, view: ModelView):
        self.model = model
        self.view = view

    def __call__(self, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[ModelView, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                rows = self.view.rows(batch, mask)
        finally:
            if was_training:
                self.model.train()
        return self.view, rows


class FrozenCopyReference:
    """A separate frozen copy of the base model, for backends whose models cannot disable their adapter."""

    description = "copy"

    def __init__(self, copy: Any):
        self.copy = copy
        self.view = ModelView(copy)

    def __call__(self, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[ModelView, torch.Tensor]:
        with torch.no_grad():
            rows = self.view.rows(batch, mask)
        return self.view, rows


def make_reference(model: Any, view: ModelView, mode: str, load_copy: Callable[[], Any]) -> Callable:
    """Pick the reference: adapter-off where the model can disable its adapter, else (or on request) a copy."""
    can_disable = callable(getattr(model, "disable_adapter", None))
    if mode == "copy":
        logger.info("reference model: a separate frozen copy (requested)")
        return FrozenCopyReference(load_copy())
    if can_disable:
        return AdapterOffReference(model, view)
    if mode == "adapter-off":
        raise BackendError(
            f"{type(model).__name__} cannot disable its adapter, so --reference-model adapter-off is impossible; "
            "use --reference-model copy (or auto)"
        )
    logger.warning("this model cannot disable its adapter; loading a frozen copy of the base model as reference")
    return FrozenCopyReference(load_copy())
