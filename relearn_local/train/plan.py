"""The plan shown before training: model, backend, data sizes, steps, adapter size and output folder."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class TrainPlan:
    """The settings, data sizes and outputs of a train or inject run, worked out before any weights are loaded."""

    stage: str
    method: str
    base: str
    base_path: str
    family: str
    model_class: str
    backend: str
    device: str
    dtype: str
    quantization: Optional[str]
    backend_reasons: list[str]
    training_set: str
    training_items: int
    training_examples: int
    training_skipped: int
    training_cut: int
    retain_examples: Optional[int]
    retain_skipped: int
    retain_cut: int
    retain_used: Optional[int]
    epochs: float
    steps_per_epoch: int
    total_steps: int
    scheduled_steps: int
    micro_batches: int
    batch_size: int
    gradient_accumulation: int
    learning_rate: float
    warmup_steps: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    target_modules: list[str]
    trainable_parameters: int
    total_parameters: int
    max_length: int
    training_tokens_per_epoch: int
    reference: Optional[str]
    out: Path
    adapter_bytes: int
    free_disk_bytes: Optional[int]
    resume_from_step: Optional[int] = None
    outputs: list[str] = field(default_factory=list)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.gradient_accumulation

    def rows(self) -> list[tuple[str, str]]:
        """Return the plan as (label, value) pairs, in reading order."""
        training = f"{self.training_examples} examples"
        if self.training_items != self.training_examples:
            training += f" for {self.training_items} items"
        training += _truncation_note(self.training_skipped, self.training_cut)
        rows = [
            ("base model", f"{self.base} ({self.model_class}, {self.family} chat format)"),
            ("backend", f"{self.backend} on {self.device}, {self.dtype}"
                        + (f", {self.quantization} base weights" if self.quantization else "")),
            ("method", self.method),
            (self.training_set, training),
        ]
        if self.retain_examples is not None:
            retain = f"{self.retain_examples} examples{_truncation_note(self.retain_skipped, self.retain_cut)}"
            if self.retain_used is not None:
                retain += f", {self.retain_used} used in this run"
            rows.append(("retain set", retain))
        if self.reference:
            rows.append(("reference model", self.reference))

        steps = f"{self.total_steps} optimizer steps ({self.steps_per_epoch} per epoch x {self.epochs:g} epochs"
        steps += f", {self.micro_batches} micro-batches)"
        if self.total_steps < self.scheduled_steps:
            steps += f", stopping early at {self.total_steps} of {self.scheduled_steps}"
        if self.resume_from_step:
            steps += f", resuming after step {self.resume_from_step}"
        rows.extend([
            ("steps", steps),
            ("batch", f"{self.batch_size} x {self.gradient_accumulation} accumulation = {self.effective_batch}"),
            ("learning rate", f"{self.learning_rate:g}, {self.warmup_steps} warm-up steps, linear decay"),
            ("adapter", f"LoRA rank {self.lora_rank}, alpha {self.lora_alpha:g}, dropout {self.lora_dropout:g} "
                        f"on {', '.join(self.target_modules)}"),
            ("trainable parameters", f"{self.trainable_parameters:,} of {self.total_parameters:,} "
                                     f"({100 * self.trainable_parameters / max(1, self.total_parameters):.2f}%)"),
            ("max length", f"{self.max_length} tokens; {self.training_tokens_per_epoch:,} training tokens per epoch"),
            ("output folder", f"{self.out} (adapter about {_human_bytes(self.adapter_bytes)}"
                              + (f", {_human_bytes(self.free_disk_bytes)} free)" if self.free_disk_bytes else ")")),
        ])
        return rows

    def summary_lines(self) -> list[str]:
        return [f"{label}: {value}" for label, value in self.rows()]


def _truncation_note(skipped: int, cut: int) -> str:
    notes = []
    if skipped:
        notes.append(f"{skipped} skipped as too long")
    if cut:
        notes.append(f"{cut} answers cut to max length")
    return f" ({', '.join(notes)})" if notes else ""


def _human_bytes(size: Optional[int]) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def free_disk_bytes(path: Path) -> Optional[int]:
    """Return free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def plan_as_dict(plan: TrainPlan) -> dict[str, Any]:
    from dataclasses import asdict

    values = asdict(plan)
    values["out"] = str(plan.out)
    values["effective_batch"] = plan.effective_batch
    return values
