"""The training loop: optimizer steps over a precomputed schedule, metrics, checkpoints, interruption.

The schedule is a pure function of the data and the seed, so resuming needs
only the number of completed steps plus the adapter, optimizer, scheduler
and random state saved with them.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import TrainingError
from ..progress import ProgressCallback, report
from .checkpoint import capture_rng, latest_checkpoint, save_checkpoint
from .data import Example, Step, collate
from .losses import ModelView, Objective, StepCounts, add_counts, batch_counts, micro_batch_loss

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a checkpoint of the last completed step was saved."""

    def __init__(self, step: int, checkpoint: Optional[Path]):
        super().__init__(f"interrupted after step {step}")
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """Turns the first Ctrl-C into a request to stop at the next micro-batch boundary; a second one raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stopping after the current micro-batch; a checkpoint will be saved (Ctrl-C again to abort)")

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class LoopContext:
    """Everything one training run's steps need."""

    model: Any
    view: ModelView
    reference: Optional[Callable]
    objective: Objective
    optimizer: Any
    scheduler: Any
    forget: Sequence[Example]
    retain: Sequence[Example]
    pad_id: int
    device: Any
    schedule: list[Step]
    last_step: int
    max_grad_norm: float
    run_dir: Path
    save_steps: int
    keep_checkpoints: int
    fingerprint: str
    progress: Optional[ProgressCallback] = None
    stop: StopRequest = field(default_factory=StopRequest)


@dataclass
class LoopOutcome:
    completed_steps: int
    last_metrics: dict[str, Any]
    seconds: float


class _Interrupt(Exception):
    """A stop request seen between micro-batches."""


def run_loop(ctx: LoopContext, start_step: int) -> LoopOutcome:
    """Run optimizer steps ``start_step`` .. ``last_step`` (exclusive), checkpointing as configured."""
    started = time.perf_counter()
    completed = start_step
    next_rng = capture_rng()
    metrics: dict[str, Any] = {}
    epoch_sizes = _epoch_sizes(ctx.schedule)
    try:
        for index in range(start_step, ctx.last_step):
            step = ctx.schedule[index]
            metrics = _run_step(ctx, index, step, epoch_sizes)
            completed = index + 1
            next_rng = capture_rng()
            _append_metrics(ctx.run_dir, metrics)
            report(
                ctx.progress, "train", completed, ctx.last_step, f"training, epoch {step.epoch + 1}",
                **_progress_metrics(metrics),
            )
            epoch_end = completed == len(ctx.schedule) or ctx.schedule[completed].epoch != step.epoch
            if completed % ctx.save_steps == 0 or epoch_end or completed == ctx.last_step:
                _checkpoint(ctx, completed, next_rng)
    except (KeyboardInterrupt, _Interrupt):
        if completed > start_step:
            saved: Optional[Path] = _checkpoint(ctx, completed, next_rng)
        else:
            latest = latest_checkpoint(ctx.run_dir)
            saved = latest.path if latest is not None else None
        logger.warning("training interrupted after step %d of %d; checkpoint: %s", completed, ctx.last_step, saved)
        raise TrainingInterrupted(completed, saved) from None
    return LoopOutcome(completed, metrics, time.perf_counter() - started)


def _checkpoint(ctx: LoopContext, completed: int, rng_state: dict[str, Any]) -> Path:
    return save_checkpoint(
        ctx.run_dir, completed, ctx.model, ctx.optimizer, ctx.scheduler, rng_state, ctx.fingerprint,
        ctx.keep_checkpoints,
    )


def _run_step(ctx: LoopContext, index: int, step: Step, epoch_sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    batches = []
    totals = StepCounts()
    real_tokens = 0
    for micro_batch in step.micro_batches:
        forget = _to_device(collate([ctx.forget[i] for i in micro_batch.forget], ctx.pad_id), ctx.device)
        retain = None
        if micro_batch.retain and ctx.objective.needs_retain:
            retain = _to_device(collate([ctx.retain[i] for i in micro_batch.retain], ctx.pad_id), ctx.device)
            real_tokens += int(retain["attention_mask"].sum())
        real_tokens += int(forget["attention_mask"].sum())
        add_counts(totals, batch_counts(ctx.objective, forget, retain))
        batches.append((forget, retain))

    ctx.model.train()
    ctx.optimizer.zero_grad(set_to_none=True)
    sums = {"forget_nll": 0.0, "retain_nll": 0.0, "kl": 0.0, "npo": 0.0, "loss": 0.0}
    for forget, retain in batches:
        if ctx.stop.requested:
            raise _Interrupt()
        loss, terms = micro_batch_loss(ctx.objective, ctx.view, ctx.reference, forget, retain, totals)
        value = float(loss.detach())
        if not math.isfinite(value):
            _raise_non_finite(ctx, index, value, terms, totals)
        loss.backward()
        sums["loss"] += value
        for name in ("forget_nll", "retain_nll", "kl", "npo"):
            sums[name] += getattr(terms, name)

    trainable = [parameter for parameter in ctx.model.parameters() if parameter.requires_grad]
    clip = ctx.max_grad_norm if ctx.max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, clip))
    if not math.isfinite(grad_norm):
        raise TrainingError(
            f"the gradient norm became {grad_norm} at step {index + 1}; training stopped and nothing was marked "
            "complete. Lower --learning-rate or train in float32"
        )
    learning_rate = ctx.scheduler.get_last_lr()[0]
    ctx.optimizer.step()
    ctx.scheduler.step()
    seconds = time.perf_counter() - started
    return _step_metrics(ctx, index, step, epoch_sizes, sums, totals, grad_norm, learning_rate, real_tokens, seconds)


def _step_metrics(ctx: LoopContext, index: int, step: Step, epoch_sizes: dict[int, tuple[int, int]],
                  sums: dict[str, float], totals: StepCounts, grad_norm: float, learning_rate: float,
                  real_tokens: int, seconds: float) -> dict[str, Any]:
    first, size = epoch_sizes[step.epoch]
    uses_retain = ctx.objective.needs_retain and totals.retain_tokens > 0
    metrics: dict[str, Any] = {
        "step": index + 1,
        "epoch": round(step.epoch + (index - first + 1) / size, 4),
        "forget_ce": sums["forget_nll"] / max(1, totals.forget_tokens),
        "retain_ce": sums["retain_nll"] / totals.retain_tokens if uses_retain else None,
        "kl": sums["kl"] / max(1, totals.kl_positions) if ctx.objective.kl_weight > 0 else None,
        "loss": sums["loss"],
        "lr": learning_rate,
        "grad_norm": grad_norm,
        "tokens": real_tokens,
        "tokens_per_second": real_tokens / seconds if seconds > 0 else None,
        "seconds": round(seconds, 4),
    }
    if ctx.objective.forget_term == "npo":
        metrics["npo"] = sums["npo"] / max(1, totals.forget_sequences)
    return metrics


def _raise_non_finite(ctx: LoopContext, index: int, value: float, terms: Any, totals: StepCounts) -> None:
    parts = [f"forget CE {terms.forget_nll / max(1, totals.forget_tokens):.4g}"]
    if totals.retain_tokens:
        parts.append(f"retain CE {terms.retain_nll / totals.retain_tokens:.4g}")
    if ctx.objective.kl_weight > 0:
        parts.append(f"KL {terms.kl / max(1, totals.kl_positions):.4g}")
    raise TrainingError(
        f"the loss became {value} at step {index + 1} ({', '.join(parts)}); training stopped and nothing was "
        "marked complete. Lower --learning-rate, train in float32 (--dtype float32), or check the data; "
        f"earlier checkpoints stay in {ctx.run_dir / 'checkpoints'}"
    )


def _to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _epoch_sizes(schedule: Sequence[Step]) -> dict[int, tuple[int, int]]:
    """Map each epoch to (index of its first step, number of its steps)."""
    sizes: dict[int, tuple[int, int]] = {}
    for index, step in enumerate(schedule):
        first, count = sizes.get(step.epoch, (index, 0))
        sizes[step.epoch] = (first, count + 1)
    return sizes


def _progress_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    shown = {"forget_ce": metrics["forget_ce"]}
    if metrics.get("npo") is not None:
        shown["npo"] = metrics["npo"]
    if metrics.get("retain_ce") is not None:
        shown["retain_ce"] = metrics["retain_ce"]
    if metrics.get("kl") is not None:
        shown["kl"] = metrics["kl"]
    shown["lr"] = metrics["lr"]
    if metrics.get("tokens_per_second") is not None:
        shown["tok/s"] = round(metrics["tokens_per_second"])
    return shown


def _append_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(metrics) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines past ``step``, which a resumed run computes again."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
