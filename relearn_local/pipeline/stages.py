"""``relearn-local run``: inject (optional), evaluate before, augment, train, export, evaluate after, report.

Each stage writes into its own subfolder of the run folder. A stage whose
subfolder contains a finished run is reused, so a stopped run continues at the
stage where it stopped; an unfinished stage resumes as that stage allows
(augment from its reply cache, train from its last checkpoint, evaluate from
its partial answers).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import config_to_yaml
from ..data import QASet, format_count, load_qa_set
from ..errors import ConfigError, RelearnError
from ..progress import ProgressCallback, report
from ..runs import STATUS_COMPLETE, RunFolder, atomic_write_json, atomic_write_text, utc_now
from .config import ResolvedRunConfig, stage_config

logger = logging.getLogger(__name__)

STAGE = "run"
PIPELINE_FILE = "pipeline.json"
STAGE_ORDER = ("inject", "eval-before", "augment", "train", "export", "eval-after")


@dataclass
class StageRecord:
    """One stage of this invocation: its folder, whether it ran or reused a finished result, and its cost."""

    name: str
    folder: Path
    status: str
    seconds: float = 0.0
    peak_rss_mb: Optional[float] = None
    note: str = ""


@dataclass
class PipelineResult:
    """Paths and figures of a finished run."""

    out: Path
    report: Path
    stages: list[StageRecord]
    base_model: str
    gguf: Optional[Path] = None
    modelfile: Optional[Path] = None
    create_command: str = ""
    run_command: str = ""
    ollama_created: bool = False
    before: Optional[dict[str, Any]] = None
    after: Optional[dict[str, Any]] = None
    figures: list[Path] = field(default_factory=list)
    augment_complete: bool = True


@dataclass
class _Context:
    """State handed from stage to stage."""

    resolved: ResolvedRunConfig
    folder: RunFolder
    forget_path: Path
    retain_path: Path
    progress: Optional[ProgressCallback]
    use_ollama: bool
    base: str
    records: list[StageRecord] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    earlier: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def run(self):
        return self.resolved.run

    def sub(self, name: str) -> Path:
        return self.folder.path / name


def run_pipeline(resolved: ResolvedRunConfig, progress: Optional[ProgressCallback] = None,
                 on_stage: Optional[Callable[[str, str], None]] = None) -> PipelineResult:
    """Run every stage in order and write report.md; ``on_stage(name, status)`` hears each start and end."""
    run = resolved.run
    folder = RunFolder(run.out, STAGE)
    resuming = folder.prepare(force=run.force, resumable=True)
    with folder:
        folder.attach_log()
        _write_config(folder, resolved)
        forget_path, retain_path = _prepare_inputs(folder, resolved, resuming)
        folder.write_manifest(inputs={"forget": run.forget, "retain": run.retain,
                                      "forget_used": forget_path, "retain_used": retain_path},
                              base_model={"spec": run.base})
        context = _Context(resolved, folder, forget_path, retain_path, progress, _ollama_wanted(run), run.base,
                           earlier=_earlier_costs(folder) if resuming else {})
        if resuming:
            logger.info("resuming the run in %s", folder.path)
        steps = _planned_steps(run)
        for index, (name, function) in enumerate(steps):
            report(progress, "pipeline", index, len(steps), f"stage {index + 1}/{len(steps)}: {name}")
            if on_stage:
                on_stage(name, "start")
            record = _run_stage(context, name, function)
            context.records.append(record)
            _write_pipeline_state(folder, context.records)
            if on_stage:
                on_stage(name, record.status)
        report(progress, "pipeline", len(steps), len(steps), "all stages finished", done=True)
        from .report import write_report

        result = write_report(context)
        folder.mark_complete(report=str(result.report))
        return result


def _planned_steps(run) -> list[tuple[str, Callable[["_Context", Path], Any]]]:
    steps: list[tuple[str, Callable[[_Context, Path], Any]]] = []
    if run.inject:
        steps.append(("inject", _inject))
    if run.evaluate_before:
        steps.append(("eval-before", _evaluate_before))
    steps.extend([("augment", _augment), ("train", _train), ("export", _export), ("eval-after", _evaluate_after)])
    return steps


def _run_stage(context: _Context, name: str, function: Callable[[_Context, Path], Any]) -> StageRecord:
    stage_dir = context.sub(name)
    state = _read_state(stage_dir)
    if state is not None and state.get("status") == STATUS_COMPLETE:
        logger.info("stage %s: reusing the finished run in %s", name, stage_dir)
        context.results[name] = _load_finished(context, name, stage_dir)
        # The cost measured when the stage ran is kept, so the report of a resumed run still shows it.
        earlier = context.earlier.get(name, {})
        return StageRecord(name, stage_dir, "reused", float(earlier.get("seconds") or 0.0), earlier.get("peak_rss_mb"),
                           note="finished earlier; reused")
    started = time.perf_counter()
    logger.info("stage %s: starting in %s", name, stage_dir)
    context.results[name] = function(context, stage_dir)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    logger.info("stage %s: finished in %.1f s (process peak RSS so far %.0f MB)", name, seconds, peak)
    return StageRecord(name, stage_dir, "ran", seconds, peak)


def _read_state(stage_dir: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((stage_dir / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux and bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _write_config(folder: RunFolder, resolved: ResolvedRunConfig) -> None:
    import yaml

    text = config_to_yaml(resolved.run)
    sections = {name: values for name, values in resolved.stages.items() if values}
    if sections:
        text += "# Stage sections from the config file\n" + yaml.safe_dump(sections, allow_unicode=True, sort_keys=False)
    atomic_write_text(folder.file("config.yaml"), text)


def _prepare_inputs(folder: RunFolder, resolved: ResolvedRunConfig, resuming: bool) -> tuple[Path, Path]:
    """Validate both sets, cut them to the limits, and store the pairs every stage reads."""
    run = resolved.run
    forget = load_qa_set(run.forget, "forget", run.question_field, run.answer_field)
    retain = load_qa_set(run.retain, "retain", run.question_field, run.answer_field)
    _reject_shared_questions(forget, retain)
    paths = []
    for role, loaded, limit in (("forget", forget, run.forget_limit), ("retain", retain, run.retain_limit)):
        rows = _rows(loaded, limit)
        path = folder.file("data") / f"{role}.json"
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
        if resuming and path.exists() and path.read_text(encoding="utf-8") != text:
            raise ConfigError(
                f"the {role} set differs from the one this run in {folder.path} started with; "
                "pass --force to start over or choose another --out"
            )
        atomic_write_text(path, text)
        paths.append(path)
    return paths[0], paths[1]


def _reject_shared_questions(forget: QASet, retain: QASet) -> None:
    """Raise ConfigError when a question is in both sets: training would get two opposite targets for it."""
    retain_records = {pair.question.strip(): pair.record for pair in retain.pairs}
    shared = [(pair.record, retain_records[pair.question.strip()]) for pair in forget.pairs
              if pair.question.strip() in retain_records]
    if not shared:
        return
    listed = ", ".join(f"forget record {left} = retain record {right}" for left, right in shared[:5])
    more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
    raise ConfigError(
        f"{format_count(len(shared), 'question')} {'is' if len(shared) == 1 else 'are'} in both the forget and "
        f"the retain set ({listed}{more}); "
        "a question cannot be both forgotten and kept, so remove each from one set "
        "('relearn-local inspect FORGET RETAIN' lists them)"
    )


def _rows(loaded: QASet, limit: Optional[int]) -> list[dict[str, str]]:
    pairs = loaded.pairs if limit is None else loaded.pairs[:limit]
    return [{"id": pair.id, "question": pair.question, "answer": pair.answer} for pair in pairs]


def _ollama_wanted(run) -> bool:
    if run.ollama == "off":
        return False
    from ..backends.ollama import ollama_responds

    responds = ollama_responds(run.ollama_host)
    if run.ollama == "on" and not responds:
        raise RelearnError(
            f"--ollama on, but Ollama is not responding at {run.ollama_host or 'the default host'}; "
            "start it with 'ollama serve' or pass --ollama auto"
        )
    if responds:
        logger.info("Ollama responds; augment uses it and export creates the model there")
    return responds


def _earlier_costs(folder: RunFolder) -> dict[str, dict[str, Any]]:
    """Return the wall time and peak RSS that an earlier invocation recorded for each stage."""
    try:
        data = json.loads(folder.file(PIPELINE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, list):
        return {}
    return {entry["name"]: entry for entry in stages if isinstance(entry, dict) and isinstance(entry.get("name"), str)}


def _write_pipeline_state(folder: RunFolder, records: list[StageRecord]) -> None:
    atomic_write_json(folder.file(PIPELINE_FILE), {
        "updated": utc_now(),
        "stages": [{"name": r.name, "folder": str(r.folder), "status": r.status, "seconds": round(r.seconds, 1),
                    "peak_rss_mb": None if r.peak_rss_mb is None else round(r.peak_rss_mb)} for r in records],
    })


def _resume_flag(stage_dir: Path) -> bool:
    state = _read_state(stage_dir)
    return state is not None and state.get("status") != STATUS_COMPLETE


# Stage functions: each builds its stage config from the run and returns the stage's result.

def _inject(context: _Context, stage_dir: Path) -> Any:
    from ..train.config import InjectConfig
    from ..train.inject import run_inject

    config = stage_config(InjectConfig, context.resolved.stages["inject"], {
        "data": [context.forget_path, context.retain_path], "out": stage_dir, "base": context.run.base,
        "seed": context.run.seed, "resume": _resume_flag(stage_dir),
    })
    result = run_inject(config, context.progress)
    context.base = str(result.model)
    return result


def _evaluate(context: _Context, stage_dir: Path, adapter: Optional[Path]) -> Any:
    from ..evaluate.config import EvaluateConfig
    from ..evaluate.stage import run_evaluate

    config = stage_config(EvaluateConfig, context.resolved.stages["evaluate"], {
        "model": _current_base(context), "adapter": adapter, "forget": context.forget_path,
        "retain": context.retain_path, "out": stage_dir, "seed": context.run.seed,
    })
    return run_evaluate(config, context.progress)


def _current_base(context: _Context) -> str:
    inject_dir = context.sub("inject")
    if context.run.inject and (inject_dir / "model").is_dir():
        return str(inject_dir / "model")
    return context.run.base


def _evaluate_before(context: _Context, stage_dir: Path) -> Any:
    return _evaluate(context, stage_dir, None)


def _evaluate_after(context: _Context, stage_dir: Path) -> Any:
    return _evaluate(context, stage_dir, context.sub("train"))


def _augment(context: _Context, stage_dir: Path) -> Any:
    from ..augment.config import AugmentConfig
    from ..augment.pipeline import run_augment

    owned: dict[str, Any] = {"forget": context.forget_path, "out": stage_dir, "seed": context.run.seed}
    section = context.resolved.stages["augment"]
    if "backend" not in section:
        owned["backend"] = "ollama" if context.use_ollama else "llamacpp"
    if context.run.ollama_host and "ollama_host" not in section:
        owned["ollama_host"] = context.run.ollama_host
    config = stage_config(AugmentConfig, section, owned)
    return run_augment(config, context.progress)


def _train(context: _Context, stage_dir: Path) -> Any:
    from ..train.config import TrainConfig
    from ..train.stage import run_train

    config = stage_config(TrainConfig, context.resolved.stages["train"], {
        "method": "relearn", "augmented": context.sub("augment"), "retain": context.retain_path,
        "base": _current_base(context), "out": stage_dir, "seed": context.run.seed,
        "resume": _resume_flag(stage_dir),
    })
    return run_train(config, context.progress)


def _export(context: _Context, stage_dir: Path) -> Any:
    from ..export.config import ExportConfig
    from ..export.stage import run_export

    owned: dict[str, Any] = {
        "adapter": context.sub("train"), "out": stage_dir, "name": context.run.name,
        "forget": context.forget_path, "ollama_create": context.use_ollama,
    }
    if context.run.ollama_host:
        owned["ollama_host"] = context.run.ollama_host
    config = stage_config(ExportConfig, context.resolved.stages["export"], owned)
    return run_export(config, context.progress)


def _load_finished(context: _Context, name: str, stage_dir: Path) -> Any:
    """Return what later stages need from a stage that finished in an earlier invocation."""
    if name == "inject":
        context.base = str(stage_dir / "model")
    return None
