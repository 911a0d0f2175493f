"""``run_inject``: teach a base model a set of facts, then merge the adapter into a new full checkpoint.

This builds what the ReLearn paper calls the vanilla model: a base that
answers the forget questions with the injected facts, so that unlearning
can be shown on a small base model that never saw them. The merged folder
works as ``--base`` for train.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..data import load_qa_set
from ..errors import ConfigError, ModelError
from ..progress import ProgressCallback, report
from ..runs import atomic_write_json
from .backends import quiet_peft_warnings
from .config import InjectConfig
from .data import TrainingRecord, pairs_to_records
from .losses import Objective
from .plan import TrainPlan
from .session import BASE_RECORD_FILE, Session, SessionInputs, TrainedModel, base_record, execute_session, plan_session

logger = logging.getLogger(__name__)

MODEL_DIR = "model"


@dataclass
class InjectResult:
    """Outcome of ``run_inject``: the plan, and for a real run the merged model folder and metrics."""

    plan: TrainPlan
    dry_run: bool
    out: Optional[Path] = None
    model: Optional[Path] = None
    adapter: Optional[Path] = None
    loss_curve: Optional[Path] = None
    summary_path: Optional[Path] = None
    steps: int = 0
    final_metrics: dict[str, Any] = field(default_factory=dict)
    seconds: Optional[float] = None


def inject_inputs(config: InjectConfig) -> SessionInputs:
    records: list[TrainingRecord] = []
    for path in config.data:
        qa_set = load_qa_set(path, "facts", config.question_field, config.answer_field)
        for record in pairs_to_records(qa_set.pairs):
            record.id = f"{Path(path).name}:{record.id}"
            record.item_id = record.id
            records.append(record)
    return SessionInputs(
        stage="inject", method="sft", training_set="facts", training_records=records, training_items=len(records),
        retain_records=None, objective=Objective("ce"), reference_mode=None,
        input_files={f"data_{number}": Path(path) for number, path in enumerate(config.data, start=1)},
    )


def run_inject(config: InjectConfig, progress: Optional[ProgressCallback] = None,
               on_plan: Optional[Callable[[TrainPlan], None]] = None) -> InjectResult:
    """Fine-tune on the facts with cross-entropy only and write the merged checkpoint to ``OUT/model``."""
    if config.out is None and not config.dry_run:
        raise ConfigError("inject needs an output folder; pass --out DIR")
    session = plan_session(config, inject_inputs(config), progress)
    session.plan.outputs = [str(Path(config.out or ".") / MODEL_DIR)]
    if on_plan is not None:
        on_plan(session.plan)
    if config.dry_run:
        return InjectResult(plan=session.plan, dry_run=True)

    def merge(run_dir: Path, trained: TrainedModel, adapter: Path) -> dict[str, Any]:
        report(progress, "merge", 0, 1, "merging the adapter into the base model")
        model_dir = merge_adapter(session, trained, adapter, run_dir / MODEL_DIR)
        report(progress, "merge", 1, 1, done=True)
        return {"model": str(model_dir)}

    outcome = execute_session(session, progress, after_training=merge)
    return InjectResult(
        plan=session.plan, dry_run=False, out=outcome.out, model=Path(outcome.extra["model"]),
        adapter=outcome.adapter, loss_curve=outcome.loss_curve, summary_path=outcome.out / "train_summary.json",
        steps=outcome.steps, final_metrics=outcome.metrics[-1] if outcome.metrics else {},
        seconds=outcome.summary.get("seconds"),
    )


def merge_adapter(session: Session, trained: TrainedModel, adapter: Path, target: Path) -> Path:
    """Merge the adapter into a full-precision load of the base and save it with tokenizer and generation config.

    The base is loaded again without quantization, because merging into
    4-bit weights rounds the update away. Output embeddings tied to the
    input embeddings stay tied.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf_path = session.resolved.hf_path
    dtype = torch.bfloat16 if session.choice.dtype == "bfloat16" else torch.float32
    del trained  # the training model is not reused; the merge starts from clean base weights
    base = AutoModelForCausalLM.from_pretrained(str(hf_path), dtype=dtype)
    with quiet_peft_warnings():
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.config.use_cache = True
    _check_tied(merged)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging))
    session.tokenizer.save_pretrained(str(staging))
    record = base_record(session.resolved, session.config.base)
    record["derived_by"] = "relearn-local inject"
    atomic_write_json(staging / BASE_RECORD_FILE, record)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    logger.info("merged model written to %s", target)
    return target


def _check_tied(model: Any) -> None:
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False) and not getattr(
        model.config, "tie_word_embeddings", False
    ):
        return
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() != embeddings.weight.data_ptr():
        raise ModelError("merging untied the output head from the input embeddings; the merged model is not saved")
