"""``run_export``: preflight, merge, convert, quantize, fix and check the GGUF, write the Modelfile, parity, Ollama."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .. import __version__
from ..progress import ProgressCallback, report
from ..runs import RunFolder, atomic_write_json, atomic_write_text, utc_now
from .config import QUANT_TYPES, ExportConfig
from .converter_input import stage_converter_input
from .convert import run_converter
from .gguf_checks import finalize_gguf
from .gguf_metadata import GgufReport
from .merge import MergeCheck, MergeOutcome, merge_adapter
from .modelfile import ModelfileSpec, render_modelfile
from .ollama_create import OllamaCreateResult, create_ollama_model, ollama_host
from .parity import ParityReport, run_parity
from .preflight import CHECK_QUESTIONS, ExportPlan, plan_export
from .quantize import quantize_gguf

logger = logging.getLogger(__name__)

SUMMARY_FILE = "export_summary.json"
LOG_DIR = "logs"
_TENSOR_LINE = re.compile(r"^INFO:hf-to-gguf:([\w.]+),\s+torch\.")


@dataclass
class ExportResult:
    """Paths, checks and timings of an export; a dry run carries only the plan."""

    plan: ExportPlan
    dry_run: bool
    create_command: str
    run_command: str
    gguf_path: Optional[Path] = None
    adapter_gguf_path: Optional[Path] = None
    modelfile_path: Optional[Path] = None
    merged_dir: Optional[Path] = None
    summary_path: Optional[Path] = None
    merge_check: Optional[MergeCheck] = None
    gguf: Optional[GgufReport] = None
    parity: Optional[ParityReport] = None
    ollama: Optional[OllamaCreateResult] = None
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # One entry per output type tried (several with --quant auto): type, size, verdict.
    attempts: list[dict[str, Any]] = field(default_factory=list)
    ollama_skipped: Optional[str] = None

    @property
    def out(self) -> Path:
        return self.plan.out

    @property
    def name(self) -> str:
        return self.plan.name


def run_export(config: ExportConfig, progress: Optional[ProgressCallback] = None,
               on_plan: Optional[Callable[[ExportPlan], None]] = None) -> ExportResult:
    """Export an adapter as an Ollama-ready GGUF with its Modelfile; see the package docstring for the steps.

    ``on_plan`` receives the plan after the preflight checks, before any heavy step.
    """
    if not config.dry_run:
        # Before the plan is printed: a folder that cannot be used fails the command at once.
        RunFolder(Path(config.out), "export").check(force=config.force)
    plan = plan_export(config, fetch=not config.dry_run)
    if on_plan is not None:
        on_plan(plan)
    create_command = f"ollama create {shlex.quote(plan.name)} -f {shlex.quote(str(plan.modelfile_path))}"
    result = ExportResult(plan, config.dry_run, create_command, f"ollama run {shlex.quote(plan.name)}",
                          notes=list(plan.notes))
    if config.dry_run:
        return result
    folder = RunFolder(plan.out, "export")
    folder.prepare(force=config.force, resumable=True)
    with folder:
        folder.attach_log()
        folder.write_config(config)
        folder.write_manifest(
            inputs={"adapter": plan.adapter_dir, "forget": config.forget},
            base_model=plan.base.describe(),
            extra={"converter": plan.converter.describe(), "plan": dict(plan.rows())},
        )
        for label, value in plan.rows():
            logger.info("plan: %s: %s", label, value)
        try:
            _execute(plan, config, result, progress)
        finally:
            _remove_scratch(plan)
        folder.mark_complete(gguf=str(result.gguf_path), parity_passed=bool(result.parity and result.parity.passed))
    return result


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@contextmanager
def _timed(result: ExportResult, step: str) -> Iterator[None]:
    """Add a step's wall time and CPU time (this process and its converter subprocesses) to its total.

    Steps repeat when --quant auto tries several output types.
    """
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    try:
        yield
    finally:
        totals = result.timings.setdefault(step, {"wall": 0.0, "cpu": 0.0})
        totals["wall"] = round(totals["wall"] + time.perf_counter() - started, 2)
        totals["cpu"] = round(totals["cpu"] + _cpu_seconds() - cpu_started, 2)


def _execute(plan: ExportPlan, config: ExportConfig, result: ExportResult,
             progress: Optional[ProgressCallback]) -> None:
    with _timed(result, "merge"):
        outcome = merge_adapter(
            Path(plan.base.hf_path), plan.adapter_dir, plan.chat_format, config.merge_dtype,
            plan.questions[:CHECK_QUESTIONS], plan.questions[:config.parity_questions], config.parity_tokens,
            plan.merged_dir if plan.mode == "merged" else None, plan.base_record, progress,
        )
    result.merge_check, result.merged_dir = outcome.check, outcome.merged_dir
    source_dir = outcome.merged_dir if plan.mode == "merged" else Path(plan.base.hf_path)
    intermediate = _convert(plan, result, source_dir, progress)
    spec = _keep_first_passing_type(plan, config, result, outcome, intermediate, progress)
    # Written before the Ollama step too, so a failed upload still leaves the summary of what was built.
    result.summary_path = _write_summary(plan, config, result, outcome)
    if not config.ollama_create:
        return
    if result.parity.skipped is None and not result.parity.passed:
        result.ollama_skipped = "the parity check failed, so the GGUF was not sent to Ollama"
        result.notes.append(result.ollama_skipped)
        _write_summary(plan, config, result, outcome)
        return
    with _timed(result, "ollama_create"):
        result.ollama = create_ollama_model(
            ollama_host(config.ollama_host), plan.name, plan.gguf_path, spec.template, spec.parameters(),
            system=config.system, adapter_path=result.adapter_gguf_path, timeout=config.ollama_timeout,
            on_step=lambda text: report(progress, "ollama", 0, None, text),
        )
    report(progress, "ollama", 1, 1, f"Ollama lists {result.ollama.listed_as}", done=True)
    _write_summary(plan, config, result, outcome)


def _keep_first_passing_type(plan: ExportPlan, config: ExportConfig, result: ExportResult, outcome: MergeOutcome,
                             intermediate: Path, progress: Optional[ProgressCallback]) -> ModelfileSpec:
    """Build and check each candidate output type in turn; keep the first that passes parity, else the last.

    Returns the Modelfile spec of the kept GGUF, whose Modelfile is on disk.
    """
    # A resumed run may find GGUFs left by an interrupted attempt. None of
    # them passed this run's check, so none may stay beside the kept one.
    for name in QUANT_TYPES:
        (plan.out / f"{plan.file_stem}-{name}.gguf").unlink(missing_ok=True)
    for index, quant in enumerate(plan.quant_candidates):
        plan.quant = quant
        _quantize_and_finalize(plan, result, outcome, intermediate, progress)
        spec = _modelfile_spec(plan, config, result)
        text = render_modelfile(spec)
        atomic_write_text(plan.modelfile_path, text)
        result.modelfile_path = plan.modelfile_path
        with _timed(result, "parity"):
            report(progress, "parity", 0, 1, f"parity check of {quant.name} with llama.cpp")
            result.parity = run_parity(
                plan.gguf_path, text, outcome.answers, [answer.prompt_ids for answer in outcome.answers],
                outcome.expectations, plan.chat_format, quant, config.parity_tokens, result.adapter_gguf_path,
                plan.original_answers,
            )
            report(progress, "parity", 1, 1, f"parity of {quant.name} {result.parity.outcome}", done=True)
        result.attempts.append({"quant": quant.name, "bytes": plan.gguf_path.stat().st_size,
                                "passed": result.parity.passed, "verdict": result.parity.verdict(),
                                "restored_questions": [item.question for item in result.parity.restored_items]})
        if result.parity.passed or result.parity.skipped is not None or index == len(plan.quant_candidates) - 1:
            return spec
        # A type that failed is not kept, so that its GGUF cannot be served by mistake.
        logger.warning("%s failed the parity check, trying the next output type: %s", quant.name,
                       result.parity.verdict())
        restored = [item.question for item in result.parity.restored_items]
        if restored:
            listed = "; ".join(restored[:3]) + ("; …" if len(restored) > 3 else "")
            reason = (f"forgotten facts came back in {len(restored)} of {result.parity.forgetting_checked} "
                      f"answers ({listed})")
        else:
            reason = result.parity.verdict()
        result.notes.append(f"{quant.name} was tried and removed: {reason}")
        plan.gguf_path.unlink(missing_ok=True)
    raise AssertionError("an export has at least one output type to try")


def _convert(plan: ExportPlan, result: ExportResult, source_dir: Path,
             progress: Optional[ProgressCallback]) -> Path:
    """Convert the merged (or base) checkpoint to an f16 GGUF in scratch space, and the adapter in adapter mode."""
    log_path = plan.out / LOG_DIR / "convert.log"
    intermediate = _scratch_paths(plan)["intermediate"]
    with _timed(result, "convert"):
        staged = stage_converter_input(source_dir, _scratch_paths(plan)["staging"], plan.chat_format)
        if staged.wrote_sentencepiece_model:
            result.notes.append("wrote a SentencePiece tokenizer.model from tokenizer.json for the converter")
        counter = {"tensors": 0}

        def on_line(line: str) -> None:
            match = _TENSOR_LINE.match(line)
            if match:
                counter["tensors"] += 1
                report(progress, "convert", counter["tensors"], None, f"converting {match.group(1)}")

        report(progress, "convert", 0, None, "converting to GGUF with llama.cpp's converter")
        run_converter(plan.converter, [staged.folder, "--outfile", intermediate, "--outtype", "f16",
                                       "--model-name", plan.name], log_path, on_line)
        if plan.mode == "adapter":
            report(progress, "convert", counter["tensors"], None, "converting the LoRA adapter")
            run_converter(plan.converter, ["--base", staged.folder, "--outfile", plan.adapter_gguf_path,
                                           "--outtype", "f16", plan.adapter_dir], log_path,
                          script=plan.converter.lora_script)
            result.adapter_gguf_path = plan.adapter_gguf_path
        report(progress, "convert", counter["tensors"], counter["tensors"],
               f"converted {counter['tensors']} tensors to GGUF", done=True)
    return intermediate


def _quantize_and_finalize(plan: ExportPlan, result: ExportResult, outcome: MergeOutcome, intermediate: Path,
                           progress: Optional[ProgressCallback]) -> None:
    """Write ``plan.gguf_path`` at ``plan.quant`` from the f16 intermediate, which stays for the next type."""
    source = intermediate
    if plan.quant.llama_ftype is not None:
        with _timed(result, "quantize"):
            report(progress, "quantize", 0, 1, f"quantizing to {plan.quant.name}")
            source = _scratch_paths(plan)["quantized"]
            quantize_gguf(intermediate, source, plan.quant, plan.out / LOG_DIR / "quantize.log")
            report(progress, "quantize", 1, 1, f"quantized to {plan.quant.name}", done=True)
    with _timed(result, "finalize"):
        report(progress, "finalize", 0, 1, "setting and checking the GGUF's serving metadata")
        finalized = finalize_gguf(source, plan.gguf_path, outcome.expectations)
        if source != intermediate:
            source.unlink(missing_ok=True)
        result.gguf, result.gguf_path = finalized.report, plan.gguf_path
        if finalized.changed_keys or finalized.changed_token_types:
            note = (f"set {', '.join(finalized.changed_keys) or 'no keys'} and "
                    f"{finalized.changed_token_types} token types in the GGUF")
            if note not in result.notes:
                result.notes.append(note)
        report(progress, "finalize", 1, 1, "checked the GGUF's serving metadata", done=True)


def _scratch_paths(plan: ExportPlan) -> dict[str, Path]:
    return {
        "staging": plan.out / ".converter-input",
        "intermediate": plan.out / f".{plan.file_stem}-convert-f16.gguf",
        "quantized": plan.out / f".{plan.file_stem}-quantized.gguf",
    }


def _remove_scratch(plan: ExportPlan) -> None:
    for path in _scratch_paths(plan).values():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _modelfile_spec(plan: ExportPlan, config: ExportConfig, result: ExportResult) -> ModelfileSpec:
    return ModelfileSpec(
        chat_format=plan.chat_format, name=plan.name, model_path=plan.gguf_path.resolve(),
        adapter_path=result.adapter_gguf_path.resolve() if result.adapter_gguf_path else None,
        system=config.system, num_ctx=config.num_ctx, temperature=config.temperature, top_k=config.top_k,
        top_p=config.top_p,
        header={"name": plan.name, "version": __version__, "base": plan.base_spec,
                "adapter_source": str(plan.adapter_dir), "create_command": result.create_command},
    )


def _write_summary(plan: ExportPlan, config: ExportConfig, result: ExportResult, outcome: MergeOutcome) -> Path:
    path = plan.out / SUMMARY_FILE
    summary: dict[str, Any] = {
        "created": utc_now(),
        "name": plan.name,
        "mode": plan.mode,
        "quant": plan.quant.name,
        "quant_requested": config.quant,
        "quant_attempts": result.attempts,
        "base": plan.base_spec,
        "adapter": str(plan.adapter_dir),
        "family": plan.chat_format.family,
        "paths": {
            "gguf": str(result.gguf_path), "adapter_gguf": str(result.adapter_gguf_path or "") or None,
            "modelfile": str(result.modelfile_path), "merged": str(result.merged_dir or "") or None,
        },
        "sizes_bytes": {"gguf": result.gguf_path.stat().st_size if result.gguf_path else None},
        "merge_check": {**outcome.check.__dict__, "passed": outcome.check.passed},
        "gguf": result.gguf.as_dict() if result.gguf else None,
        "serving_expectations": outcome.expectations.as_dict(),
        "parity": result.parity.as_dict() if result.parity else None,
        "ollama_created": result.ollama is not None,
        "ollama_skipped": result.ollama_skipped,
        "ollama": result.ollama.__dict__ if result.ollama else None,
        "commands": {"create": result.create_command, "run": result.run_command},
        "timings_seconds": result.timings,
        "converter": plan.converter.describe(),
        "questions_source": plan.questions_source,
        "notes": result.notes,
    }
    atomic_write_json(path, summary)
    return path
