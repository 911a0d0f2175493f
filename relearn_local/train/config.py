"""Typed configs of the train and inject stages, and their validation.

Values marked as paper defaults come from the ReLearn authors' training
setup (repository zjunlp/unlearn: ``baselines/config/forget_lora.yaml`` and
``baselines/unlearn_scripts/kud-relearn.sh`` for unlearning on KnowUnDo,
``baselines/config/finetune_lora.yaml`` and ``pretrain_scripts/kud-pt.sh`` for
the fine-tuned "vanilla" model). Where a default differs from theirs, the
help text states their value and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ..config import option
from ..errors import ConfigError
from ..models import EMBEDDED_BASE

@dataclass
class TrainerOptions:
    """Options shared by train and inject: model loading, LoRA, optimisation, checkpoints."""

    out: Optional[Path] = option(None, "Run folder for the adapter, metrics, loss curve and checkpoints.")
    base: str = option(
        EMBEDDED_BASE, "Base model: 'gemma3-270m' (embedded), a local HF folder, a GGUF file or a hub id."
    )
    question_field: Optional[str] = option(None, "Record field holding the question in QA files (detected when unset).")
    answer_field: Optional[str] = option(None, "Record field holding the answer in QA files (detected when unset).")
    backend: Literal["auto", "unsloth", "transformers"] = option(
        "auto",
        "Training backend: auto takes unsloth when a CUDA GPU is present and unsloth imports, else transformers+peft.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto",
        "Compute dtype: auto is float32 on CPU and bfloat16 on a GPU that supports it. "
        "float16 is rejected for Gemma models, whose activations overflow it.",
    )
    quantization: Literal["auto", "4bit", "none"] = option(
        "auto", "Base weights on a CUDA GPU: auto and 4bit load them in 4-bit NF4 (bitsandbytes or unsloth); "
        "none keeps full precision. CPU training never quantizes."
    )
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass: less memory, about a third more compute."
    )
    lora_rank: int = option(32, "LoRA rank r.", paper=True)
    lora_alpha: float = option(32.0, "LoRA alpha; the update is scaled by alpha / rank.", paper=True)
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.", paper=True)
    max_length: int = option(
        512,
        "Maximum tokens of prompt plus answer. Longer answers are cut, and examples whose prompt alone "
        "reaches the limit are skipped; both are counted in the log.",
        paper=True,
    )
    learning_rate: float = option(1e-4, "Peak learning rate (AdamW).")
    epochs: float = option(4.0, "Passes over the training set (fractions allowed).")
    batch_size: int = option(4, "Examples per micro-batch; the retain batch has the same size.")
    gradient_accumulation: int = option(
        1, "Micro-batches per optimizer step; effective batch = batch size x gradient accumulation."
    )
    weight_decay: float = option(0.01, "AdamW weight decay.", paper=True)
    warmup_steps: Optional[int] = option(
        None,
        "Linear warm-up steps before linear decay to zero; unset warms up for one epoch (as the authors' "
        "training scripts do), at most a quarter of all steps.",
    )
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 turns clipping off.")
    max_steps: Optional[int] = option(
        None, "Stop after this many optimizer steps (the schedule still spans every epoch); unset runs all epochs."
    )
    seed: int = option(0, "Random seed for shuffling, LoRA initialisation and dropout.")
    save_steps: int = option(50, "Write a resumable checkpoint every N optimizer steps (and at each epoch end).")
    keep_checkpoints: int = option(1, "Checkpoints kept in OUT/checkpoints; older ones are deleted.")
    resume: bool = option(False, "Continue an interrupted run in --out from its last checkpoint.")
    force: bool = option(False, "Overwrite a finished or unfinished run in --out instead of rejecting it.")
    dry_run: bool = option(False, "Print the plan (model, sizes, steps, parameters) and stop before training.")

    def validate_common(self) -> None:
        positive = {
            "lora_rank": self.lora_rank, "max_length": self.max_length, "batch_size": self.batch_size,
            "gradient_accumulation": self.gradient_accumulation, "save_steps": self.save_steps,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} = {value} is invalid; it must be at least 1")
        if self.max_length < 8:
            raise ConfigError(f"max_length = {self.max_length} is too short for any prompt and answer; use 64 or more")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate = {self.learning_rate} is invalid; it must be positive")
        if not self.epochs > 0:
            raise ConfigError(f"epochs = {self.epochs} is invalid; it must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout = {self.lora_dropout} is invalid; use a value in [0, 1)")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha = {self.lora_alpha} is invalid; it must be positive")
        for name in ("weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} = {getattr(self, name)} is invalid; it must not be negative")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps = {self.warmup_steps} is invalid; it must not be negative")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps = {self.max_steps} is invalid; it must be at least 1")
        if self.resume and self.force:
            raise ConfigError("--resume and --force contradict each other; pass one of them")


@dataclass
class TrainConfig(TrainerOptions):
    """Settings of one ``relearn-local train`` run.

    The objective of the default method is
    L = forget_weight * CE(augmented forget set) + retain_weight * CE(retain set)
    + kl_weight * KL(reference model || model) on the retain set.
    """

    method: Literal["relearn", "ga", "gd", "npo"] = option(
        "relearn",
        "Objective: relearn (learn the augmented safe answers), or a baseline on the original forget set: "
        "ga (gradient ascent), gd (ga plus retain CE), npo (negative preference optimisation).",
    )
    augmented: Optional[Path] = option(
        None, "Augmented forget set: an augment run folder (augmented.jsonl + summary.json) or a QA file (relearn)."
    )
    forget: Optional[Path] = option(None, "Original forget set, a QA file; the baselines ga, gd and npo train on it.")
    retain: Optional[Path] = option(None, "Retain set, a QA file of knowledge the model must keep.")
    learning_rate: float = option(
        1e-4,
        "Peak learning rate (AdamW). The authors used 1e-5 on KnowUnDo and 1e-4 on TOFU with Llama-2-7B; "
        "1e-4 moves a 270M model within a few epochs.",
    )
    epochs: float = option(4.0, "Passes over the training set (fractions allowed); the authors used 4 on KnowUnDo.",
                           paper=True)
    batch_size: int = option(
        4, "Examples per micro-batch, forget and retain each. The default effective batch of 4 matches the "
        "authors' KnowUnDo setting (1 x 4 accumulation on a GPU).",
    )
    min_forget_coverage: float = option(
        0.5,
        "Reject an augmented forget set in which fewer than this share of forget items have an accepted answer.",
    )
    forget_weight: float = option(1.0, "Weight of the forget term.", paper=True)
    retain_weight: float = option(1.0, "Weight of the retain cross-entropy.", paper=True)
    kl_weight: float = option(1.0, "Weight of KL(reference || model) on the retain set.", paper=True)
    kl_positions: Literal["all", "answer"] = option(
        "all",
        "Retain positions the KL term averages over: all (every non-padding token) or answer (supervised tokens "
        "only, cheaper). Padding never counts either way.",
    )
    npo_beta: float = option(0.1, "Inverse temperature beta of NPO.", paper=True)
    npo_retain: Literal["ce", "kl"] = option("ce", "Retain term NPO is combined with: ce (retain CE) or kl.")
    reference_model: Literal["auto", "adapter-off", "copy"] = option(
        "auto",
        "Reference model for KL and NPO: adapter-off (the same model with the adapter disabled, no second copy) "
        "or copy (a separate frozen copy, the fallback when adapters cannot be disabled).",
    )

    def validate(self) -> None:
        self.validate_common()
        if not 0 <= self.min_forget_coverage <= 1:
            raise ConfigError(
                f"min_forget_coverage = {self.min_forget_coverage} is invalid; use a share between 0 and 1"
            )
        if self.npo_beta <= 0:
            raise ConfigError(f"npo_beta = {self.npo_beta} is invalid; it must be positive")
        for name in ("forget_weight", "retain_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} = {getattr(self, name)} is invalid; weights must not be negative")


@dataclass
class InjectConfig(TrainerOptions):
    """Settings of one ``relearn-local inject`` run: plain fine-tuning on facts, merged into a new base.

    LoRA defaults follow the authors' fine-tuned "vanilla" model: rank 8,
    alpha 16, dropout 0.1. Their learning rate (3e-4), 10 epochs and
    effective batch 64 (16 x 4) were sized for Llama-2-7B on the full KnowUnDo
    privacy set. The learning rate and batch here are instead sized to teach a
    few dozen facts to a 270M model on a CPU.
    """

    data: list[Path] = option([], "QA files holding the facts to teach (question/answer pairs).")
    lora_rank: int = option(8, "LoRA rank r.", paper=True)
    lora_alpha: float = option(16.0, "LoRA alpha; the update is scaled by alpha / rank.", paper=True)
    lora_dropout: float = option(0.1, "Dropout on the LoRA input.", paper=True)
    learning_rate: float = option(
        1e-3, "Peak learning rate (AdamW); the authors used 3e-4 with effective batch 64 on Llama-2-7B."
    )
    epochs: float = option(10.0, "Passes over the facts.", paper=True)
    batch_size: int = option(8, "Examples per micro-batch (the authors used 16 x 4 on a GPU).")
    weight_decay: float = option(1e-4, "AdamW weight decay.", paper=True)

    def validate(self) -> None:
        self.validate_common()
        if not self.data:
            raise ConfigError("inject needs at least one --data FILE of question/answer facts")
