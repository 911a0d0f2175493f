"""``run_train``: ReLearn unlearning (or a baseline) with a LoRA adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..data import load_qa_set
from ..errors import ConfigError
from ..progress import ProgressCallback
from .config import TrainConfig
from .data import check_coverage, load_augmented, pairs_to_records
from .losses import Objective
from .plan import TrainPlan
from .session import SessionInputs, execute_session, plan_session

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of ``run_train``: the plan, and for a real run the adapter, metrics and summary files."""

    plan: TrainPlan
    dry_run: bool
    out: Optional[Path] = None
    adapter: Optional[Path] = None
    metrics_path: Optional[Path] = None
    loss_curve: Optional[Path] = None
    summary_path: Optional[Path] = None
    steps: int = 0
    final_metrics: dict[str, Any] = field(default_factory=dict)
    seconds: Optional[float] = None
    resumed_from_step: Optional[int] = None


def objective_for(config: TrainConfig) -> Objective:
    """Translate the method and weights into the terms the loss combines."""
    if config.method == "relearn":
        return Objective("ce", config.forget_weight, config.retain_weight, config.kl_weight, config.kl_positions)
    if config.method == "ga":
        return Objective("ascent", config.forget_weight)
    if config.method == "gd":
        return Objective("ascent", config.forget_weight, retain_weight=config.retain_weight)
    if config.npo_retain == "kl":
        return Objective("npo", config.forget_weight, kl_weight=config.kl_weight,
                         kl_positions=config.kl_positions, npo_beta=config.npo_beta)
    return Objective("npo", config.forget_weight, retain_weight=config.retain_weight, npo_beta=config.npo_beta)


def train_inputs(config: TrainConfig) -> SessionInputs:
    """Load the training set the method needs (augmented forget set or original forget set) and the retain set."""
    objective = objective_for(config)
    if config.method == "relearn":
        if config.augmented is None:
            raise ConfigError(
                "--method relearn trains on the augmented forget set; pass --augmented DIR (an augment run folder)"
            )
        augmented = load_augmented(config.augmented, config.question_field, config.answer_field)
        check_coverage(augmented, config.min_forget_coverage)
        records, items, name = augmented.records, augmented.items_with_answer, "augmented forget set"
        files = {"augmented": augmented.path / "augmented.jsonl" if augmented.path.is_dir() else augmented.path}
    else:
        if config.forget is None:
            raise ConfigError(
                f"--method {config.method} trains on the original forget set; pass --forget FILE"
            )
        if config.augmented is not None:
            logger.warning("--augmented is ignored by --method %s, which trains on --forget", config.method)
        forget = load_qa_set(config.forget, "forget", config.question_field, config.answer_field)
        records, items, name = pairs_to_records(forget.pairs), len(forget.pairs), "forget set"
        files = {"forget": config.forget}
    retain_records = None
    if objective.needs_retain:
        if config.retain is None:
            raise ConfigError(f"--method {config.method} needs the retain set; pass --retain FILE")
        retain = load_qa_set(config.retain, "retain", config.question_field, config.answer_field)
        retain_records = pairs_to_records(retain.pairs)
        files["retain"] = config.retain
    return SessionInputs(
        stage="train", method=config.method, training_set=name, training_records=records, training_items=items,
        retain_records=retain_records, objective=objective,
        reference_mode=config.reference_model if objective.needs_reference else None, input_files=files,
    )


def run_train(config: TrainConfig, progress: Optional[ProgressCallback] = None,
              on_plan: Optional[Callable[[TrainPlan], None]] = None) -> TrainResult:
    """Plan, then (unless ``config.dry_run``) train the adapter into ``config.out``.

    ``on_plan`` receives the plan before any weights are loaded, so a caller
    can show it while training runs.
    """
    if config.out is None and not config.dry_run:
        raise ConfigError("train needs an output folder; pass --out DIR")
    session = plan_session(config, train_inputs(config), progress)
    if on_plan is not None:
        on_plan(session.plan)
    if config.dry_run:
        return TrainResult(plan=session.plan, dry_run=True)
    outcome = execute_session(session, progress)
    return TrainResult(
        plan=session.plan, dry_run=False, out=outcome.out, adapter=outcome.adapter,
        metrics_path=outcome.out / "metrics.jsonl", loss_curve=outcome.loss_curve,
        summary_path=outcome.out / "train_summary.json", steps=outcome.steps,
        final_metrics=outcome.metrics[-1] if outcome.metrics else {}, seconds=outcome.summary.get("seconds"),
        resumed_from_step=outcome.summary.get("resumed_from_step"),
    )
