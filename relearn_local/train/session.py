"""Shared machinery of train and inject: planning, run-folder handling, model set-up, the run itself.

``plan_session`` does everything that needs no model weights (resolve the
base, tokenize, lay out the schedule, count parameters), so ``--dry-run``
and the printed plan are fast. ``execute_session`` then loads the model,
trains, and writes the adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..chat_formats import get_chat_format
from ..config import config_to_dict
from ..errors import ConfigError, RunFolderError, TrainingError
from ..models import ResolvedModel, resolve_base
from ..progress import ProgressCallback, report
from ..runs import STATUS_COMPLETE, RunFolder, atomic_write_json
from .backends import (BackendChoice, LoraSettings, choose_backend, describe_architecture, load_for_training,
                       load_frozen_copy, load_tokenizer)
from .checkpoint import latest_checkpoint, load_checkpoint, restore_rng
from .config import TrainerOptions
from .data import EncodedSet, Step, TrainingRecord, build_schedule, encode_records, retain_coverage
from .plan import TrainPlan, free_disk_bytes, plan_as_dict

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
BASE_RECORD_FILE = "relearn_base.json"
SUMMARY_FILE = "train_summary.json"
# Config fields that do not change what is trained, so a resumed run may differ in them.
RESUME_FREE_FIELDS = frozenset({"out", "resume", "force", "dry_run", "save_steps", "keep_checkpoints", "max_steps"})


@dataclass
class SessionInputs:
    """The training data, objective and input files a stage hands to the shared trainer."""

    stage: str
    method: str
    training_set: str
    training_records: list[TrainingRecord]
    training_items: int
    retain_records: Optional[list[TrainingRecord]]
    objective: Any
    reference_mode: Optional[str]
    input_files: dict[str, Optional[Path]]


@dataclass
class Session:
    """A planned run: everything worked out before the model is loaded."""

    config: TrainerOptions
    inputs: SessionInputs
    resolved: ResolvedModel
    choice: BackendChoice
    tokenizer: Any
    training: EncodedSet
    retain: Optional[EncodedSet]
    schedule: list[Step]
    last_step: int
    warmup_steps: int
    plan: TrainPlan
    architecture: dict[str, Any] = field(default_factory=dict)


def plan_session(config: TrainerOptions, inputs: SessionInputs,
                 progress: Optional[ProgressCallback] = None) -> Session:
    """Resolve the base model and backend, tokenize the data and lay out every step, without loading weights."""
    resolved = resolve_base(config.base, need_hf=True, progress=progress)
    if resolved.hf_path is None:
        raise ConfigError(f"--base {config.base} has no transformers checkpoint to train")
    choice = choose_backend(config.backend, config.dtype, config.quantization, resolved.family)
    tokenizer = load_tokenizer(resolved.hf_path)
    chat_format = get_chat_format(resolved.family)
    training = encode_records(inputs.training_set, inputs.training_records, tokenizer, chat_format, config.max_length)
    retain = None
    if inputs.retain_records is not None:
        retain = encode_records("retain set", inputs.retain_records, tokenizer, chat_format, config.max_length)
    schedule = build_schedule(
        [example.length for example in training.examples],
        [example.length for example in retain.examples] if retain else [],
        config.batch_size, config.gradient_accumulation, config.epochs, config.seed,
    )
    last_step = min(len(schedule), config.max_steps) if config.max_steps else len(schedule)
    first_epoch_steps = sum(1 for step in schedule if step.epoch == 0)
    warmup = config.warmup_steps
    if warmup is None:
        warmup = min(first_epoch_steps, len(schedule) // 4)
    architecture = describe_architecture(resolved.hf_path, config.lora_rank)
    session = Session(config, inputs, resolved, choice, tokenizer, training, retain, schedule, last_step,
                      min(warmup, len(schedule)), None, architecture)  # type: ignore[arg-type]
    session.plan = _build_plan(session)
    logger.info("steps in the schedule: %d (%d per epoch); this run trains %d", len(schedule), first_epoch_steps,
                last_step)
    return session


def _build_plan(session: Session) -> TrainPlan:
    config, inputs, schedule = session.config, session.inputs, session.schedule
    retain_size = len(session.retain.examples) if session.retain else None
    trainable = session.architecture["trainable_parameters"]
    reference = None
    if inputs.reference_mode == "copy":
        reference = "a separate frozen copy of the base model"
    elif inputs.reference_mode:
        reference = "the same model with the adapter disabled (no second copy)"
    return TrainPlan(
        stage=inputs.stage, method=inputs.method, base=config.base, base_path=str(session.resolved.hf_path),
        family=session.resolved.family, model_class=session.architecture["class"],
        backend=session.choice.backend, device=session.choice.device, dtype=session.choice.dtype,
        quantization=session.choice.quantization, backend_reasons=session.choice.reasons,
        training_set=inputs.training_set, training_items=inputs.training_items,
        training_examples=len(session.training.examples), training_skipped=len(session.training.skipped),
        training_cut=len(session.training.cut), retain_examples=retain_size,
        retain_skipped=len(session.retain.skipped) if session.retain else 0,
        retain_cut=len(session.retain.cut) if session.retain else 0,
        retain_used=retain_coverage(schedule[:session.last_step], retain_size) if retain_size else None,
        epochs=config.epochs, steps_per_epoch=sum(1 for step in schedule if step.epoch == 0),
        total_steps=session.last_step, scheduled_steps=len(schedule),
        micro_batches=sum(len(step.micro_batches) for step in schedule[:session.last_step]),
        batch_size=config.batch_size, gradient_accumulation=config.gradient_accumulation,
        learning_rate=config.learning_rate, warmup_steps=session.warmup_steps, lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=session.architecture["target_modules"], trainable_parameters=trainable,
        total_parameters=session.architecture["parameters"], max_length=config.max_length,
        training_tokens_per_epoch=session.training.tokens, reference=reference, out=Path(config.out or "."),
        adapter_bytes=trainable * 4, free_disk_bytes=free_disk_bytes(Path(config.out or ".")),
    )


def fingerprint(session: Session) -> str:
    """Hash what decides the trained weights: settings (except resume-free ones), inputs and base model."""
    settings = {key: value for key, value in config_to_dict(session.config).items() if key not in RESUME_FREE_FIELDS}
    from ..runs import sha256_path

    files = {name: sha256_path(path) for name, path in session.inputs.input_files.items() if path is not None}
    payload = json.dumps({"settings": settings, "files": files, "base": session.resolved.digest}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def open_run_folder(session: Session) -> tuple[RunFolder, Optional[int]]:
    """Create or reopen --out; return the folder and the checkpoint step a resumed run continues from."""
    config = session.config
    folder = RunFolder(Path(config.out), session.inputs.stage)  # type: ignore[arg-type]
    state = folder.read_state() if folder.path.is_dir() else None
    unfinished = state is not None and state.get("stage") == folder.stage and state.get("status") != STATUS_COMPLETE
    if unfinished and not (config.resume or config.force):
        latest = latest_checkpoint(folder.path)
        where = f"last checkpoint after step {latest.step}" if latest else "no checkpoint yet"
        raise RunFolderError(
            f"{folder.path} contains an unfinished {folder.stage} run ({where}); pass --resume to continue it "
            "or --force to start over"
        )
    if config.resume and state is not None and state.get("status") == STATUS_COMPLETE and not config.force:
        raise RunFolderError(
            f"{folder.path} contains a finished {folder.stage} run, so there is nothing to resume; "
            "pass --force to train again"
        )
    resuming = folder.prepare(force=config.force, resumable=True)
    if not resuming:
        if config.resume:
            logger.info("nothing to resume in %s; starting a new run", folder.path)
        return folder, None
    latest = latest_checkpoint(folder.path)
    return folder, (latest.step if latest else 0)


def write_run_records(folder: RunFolder, session: Session) -> None:
    folder.write_config(session.config)
    folder.write_manifest(
        inputs=session.inputs.input_files,
        base_model=session.resolved.describe(),
        extra={"method": session.inputs.method, "plan": plan_as_dict(session.plan)},
    )
    for line in session.plan.summary_lines():
        logger.info("plan: %s", line)
    for reason in session.choice.reasons:
        logger.info("backend: %s", reason)
    for encoded in (session.training, session.retain):
        note = encoded.truncation_note(session.config.max_length) if encoded is not None else None
        if note:
            logger.warning("%s", note)
    if session.retain is not None and session.plan.retain_used is not None:
        if session.plan.retain_used < len(session.retain.examples):
            logger.warning(
                "only %d of %d retain examples are used in this run; raise --epochs or --batch-size to use them all",
                session.plan.retain_used, len(session.retain.examples),
            )


@dataclass
class TrainedModel:
    """The live model after set-up: what the loop and the final save need."""

    model: Any
    view: Any
    reference: Optional[Callable]
    optimizer: Any
    scheduler: Any
    device: Any
    pad_id: int


def set_up_model(session: Session) -> TrainedModel:
    """Load the model with a fresh adapter, the reference model, the optimizer and the learning-rate schedule."""
    import torch

    from .losses import ModelView
    from .reference import make_reference

    config = session.config
    lora = LoraSettings(config.lora_rank, config.lora_alpha, config.lora_dropout, config.gradient_checkpointing,
                        config.max_length, config.seed)
    loaded = load_for_training(session.resolved.hf_path, session.choice, lora)  # type: ignore[arg-type]
    model = loaded.model
    counted = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    logger.info("trainable parameters: %d (planned %d)", counted, session.plan.trainable_parameters)
    view = ModelView(model)
    reference = None
    if session.inputs.objective.needs_reference:
        copy_loader = lambda: load_frozen_copy(session.resolved.hf_path, session.choice)  # noqa: E731
        reference = make_reference(model, view, session.inputs.reference_mode or "auto", copy_loader)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _linear_schedule(session.warmup_steps, len(session.schedule))
    )
    tokenizer = session.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = torch.device("cuda" if session.choice.device == "cuda" else "cpu")
    return TrainedModel(model, view, reference, optimizer, scheduler, device, int(pad_id or 0))


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        remaining = total - step
        span = max(1, total - warmup)
        return max(0.0, remaining / span)

    return factor


@dataclass
class SessionOutcome:
    """Paths and metrics of a finished run, for the stage's result."""

    out: Path
    adapter: Path
    loss_curve: Optional[Path]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)


AfterTraining = Callable[[Path, "TrainedModel", Path], dict[str, Any]]


def execute_session(session: Session, progress: Optional[ProgressCallback] = None,
                    after_training: Optional[AfterTraining] = None) -> SessionOutcome:
    """Train in the run folder, write the adapter, curve and summary, then mark the run complete.

    ``after_training(run_dir, trained, adapter_dir)`` runs before the run is
    marked complete (inject merges the adapter there); its dict goes into
    the summary.
    """
    from .loop import LoopContext, StopRequest, read_metrics, run_loop, truncate_metrics
    from .plots import CURVE_FILE, draw_loss_curve

    folder, resume_step = open_run_folder(session)
    session.plan.resume_from_step = resume_step or None
    started = time.perf_counter()
    with folder:
        folder.attach_log()
        write_run_records(folder, session)
        trained = set_up_model(session)
        run_fingerprint = fingerprint(session)
        start_step = _restore(session, folder.path, trained, resume_step, run_fingerprint)
        truncate_metrics(folder.path, start_step)
        with StopRequest() as stop:
            context = LoopContext(
                trained.model, trained.view, trained.reference, session.inputs.objective, trained.optimizer,
                trained.scheduler, session.training.examples, session.retain.examples if session.retain else [],
                trained.pad_id, trained.device, session.schedule, session.last_step, session.config.max_grad_norm,
                folder.path, session.config.save_steps, session.config.keep_checkpoints, run_fingerprint,
                progress, stop,
            )
            outcome = run_loop(context, start_step)
        report(progress, "train", session.last_step, session.last_step, done=True)
        adapter = save_adapter(trained.model, folder.path / ADAPTER_DIR, session)
        metrics = read_metrics(folder.path)
        training_label = "forget CE" if session.inputs.stage == "train" else "training CE"
        curve = draw_loss_curve(metrics, folder.path / CURVE_FILE, _curve_title(session), training_label)
        extra = after_training(folder.path, trained, adapter) if after_training is not None else {}
        summary = _summary(session, metrics, outcome, started, resume_step, adapter, curve)
        summary.update(extra)
        atomic_write_json(folder.path / SUMMARY_FILE, summary)
        folder.mark_complete(steps=outcome.completed_steps, adapter=str(adapter))
        logger.info("%s finished: %d steps, adapter in %s", session.inputs.stage, outcome.completed_steps, adapter)
    return SessionOutcome(folder.path, adapter, curve, summary, metrics, outcome.completed_steps, extra)


def _restore(session: Session, run_dir: Path, trained: TrainedModel, resume_step: Optional[int],
             run_fingerprint: str) -> int:
    if not resume_step:
        return 0
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return 0
    if latest.fingerprint != run_fingerprint:
        raise RunFolderError(
            f"{run_dir} was started with other settings, inputs or base model than this command; "
            "rerun with the original options, or pass --force to start over"
        )
    rng_state = load_checkpoint(latest, trained.model, trained.optimizer, trained.scheduler)
    restore_rng(rng_state)
    logger.info("resuming after step %d from %s", latest.step, latest.path)
    return latest.step


def save_adapter(model: Any, target: Path, session: Session) -> Path:
    """Write the PEFT adapter and relearn_base.json (how later stages find the base model and chat format)."""
    import shutil

    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    atomic_write_json(staging / BASE_RECORD_FILE, base_record(session.resolved, session.config.base))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def base_record(resolved: ResolvedModel, spec: str) -> dict[str, Any]:
    return {"base": spec, "hf_path": str(resolved.hf_path), "family": resolved.family, "digest": resolved.digest}


def _curve_title(session: Session) -> str:
    return f"{session.inputs.stage} ({session.inputs.method}) on {session.config.base}"


def _summary(session: Session, metrics: list[dict[str, Any]], outcome: Any, started: float,
             resume_step: Optional[int], adapter: Path, curve: Optional[Path]) -> dict[str, Any]:
    step_seconds = [row["seconds"] for row in metrics if row.get("seconds")]
    rates = [row["tokens_per_second"] for row in metrics if row.get("tokens_per_second")]
    return {
        "stage": session.inputs.stage,
        "method": session.inputs.method,
        "steps": outcome.completed_steps,
        "scheduled_steps": len(session.schedule),
        "resumed_from_step": resume_step,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_per_step": round(sum(step_seconds) / len(step_seconds), 4) if step_seconds else None,
        "tokens_per_second": round(sum(rates) / len(rates), 1) if rates else None,
        "first": metrics[0] if metrics else None,
        "final": metrics[-1] if metrics else None,
        "adapter": str(adapter),
        "loss_curve": str(curve) if curve else None,
        "plan": plan_as_dict(session.plan),
    }


def check_not_empty(records: list[TrainingRecord], what: str) -> None:
    if not records:
        raise TrainingError(f"the {what} is empty; nothing to train on")
