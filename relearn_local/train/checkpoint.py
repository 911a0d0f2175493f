"""Resumable checkpoints: adapter, optimizer, scheduler, random state and the position in the schedule.

A checkpoint folder ``checkpoints/step-NNNNNN`` is written under a temporary
name and renamed when whole, so a folder with that name is always complete.
Its adapter files load with ``PeftModel.from_pretrained`` like the final one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import TrainingError
from ..runs import atomic_write_json

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
PREFIX = "step-"


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    fingerprint: str


def capture_rng() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                    rng_state: dict[str, Any], fingerprint: str, keep: int) -> Path:
    """Write the checkpoint for ``step`` completed optimizer steps and delete all but the newest ``keep``."""
    import torch

    folder = run_dir / CHECKPOINTS_DIR
    final = folder / f"{PREFIX}{step:06d}"
    staging = folder / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(str(staging))
    torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)
    torch.save(rng_state, staging / RNG_FILE)
    atomic_write_json(staging / STATE_FILE, {"step": step, "fingerprint": fingerprint})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    logger.info("checkpoint saved: %s", final)
    return final


def list_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """Return the complete checkpoints in step order."""
    folder = run_dir / CHECKPOINTS_DIR
    found: list[CheckpointInfo] = []
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        if not child.is_dir() or not child.name.startswith(PREFIX):
            continue
        try:
            state = json.loads((child / STATE_FILE).read_text(encoding="utf-8"))
            found.append(CheckpointInfo(child, int(state["step"]), str(state["fingerprint"])))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable checkpoint %s (%s)", child, exc)
    return sorted(found, key=lambda info: info.step)


def latest_checkpoint(run_dir: Path) -> Optional[CheckpointInfo]:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(info: CheckpointInfo, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load adapter weights, optimizer and scheduler state into the given objects; return the saved random state."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights_path = info.path / "adapter_model.safetensors"
    if not weights_path.exists():
        raise TrainingError(f"checkpoint {info.path} has no adapter_model.safetensors; pass --force to start over")
    state = load_file(str(weights_path))
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise TrainingError(
            f"checkpoint {info.path} does not match this model ({len(unexpected)} unknown adapter weights); "
            "pass --force to start over"
        )
    optimizer.load_state_dict(torch.load(info.path / OPTIMIZER_FILE, weights_only=True))
    scheduler.load_state_dict(torch.load(info.path / SCHEDULER_FILE, weights_only=True))
    return torch.load(info.path / RNG_FILE, weights_only=True)
