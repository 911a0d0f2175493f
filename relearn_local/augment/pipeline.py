"""The augment stage: turn a forget set into an augmented forget set of variants and safe answers.

``run_augment`` loads the forget set, opens the writer and judge backends,
augments each forget item (``item.process_item``) with ``concurrency`` items in
flight, saves each item's outcome as it finishes so an interrupted run
resumes, and writes ``augmented.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

from ..data import QASet, load_qa_set, write_jsonl
from ..progress import ProgressCallback, report
from ..runs import RunFolder, atomic_write_json, sha256_path
from ..errors import RunFolderError
from .backend_choice import open_backends
from .calls import CallSettings
from .config import AugmentConfig
from .diversify import completion_records, mix_in_records
from .item import ItemContext, process_item
from .leak_guard import LeakGuard
from .records import ItemOutcome
from .summary import AugmentResult, build_summary

logger = logging.getLogger(__name__)

STAGE = "augment"
AUGMENTED_FILE = "augmented.jsonl"
SUMMARY_FILE = "summary.json"
ITEMS_FOLDER = "items"
FINGERPRINT_FILE = "fingerprint.json"
# Config fields that change no record, so a run may resume after they change.
_RESUME_NEUTRAL_FIELDS = {"out", "force", "concurrency", "timeout", "retries", "cache", "cache_dir", "ollama_host"}


class ItemStore:
    """Per-item outcome files of one run, so that a resumed run skips finished items."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, index: int) -> Path:
        return self.folder / f"item-{index:05d}.json"

    def restore(self, fingerprint: dict[str, Any], resuming: bool) -> dict[int, ItemOutcome]:
        """Return the finished items of an interrupted run; start afresh when not resuming.

        Failed items are not restored, so a resumed run tries them again.
        Raises RunFolderError when the run was started with other inputs or options.
        """
        marker = self.folder / FINGERPRINT_FILE
        if not resuming or not marker.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(marker, fingerprint)
            return {}
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        if recorded != fingerprint:
            changed = sorted(key for key in set(recorded) | set(fingerprint) if recorded.get(key) != fingerprint.get(key))
            raise RunFolderError(
                f"{self.folder.parent} contains an unfinished augment run with other inputs or options "
                f"({', '.join(changed)}); pass --force to start over or choose another --out"
            )
        restored = {}
        for path in sorted(self.folder.glob("item-*.json")):
            outcome = ItemOutcome.from_dict(json.loads(path.read_text(encoding="utf-8")))
            if outcome.ok:
                restored[outcome.index] = outcome
        logger.info("resuming: %d finished items restored from %s", len(restored), self.folder)
        return restored

    def save(self, outcome: ItemOutcome) -> None:
        atomic_write_json(self.path(outcome.index), outcome.to_dict())


def _fingerprint(config: AugmentConfig, forget: QASet, writer: Any, judge: Any) -> dict[str, Any]:
    options = {key: value for key, value in dataclasses.asdict(config).items() if key not in _RESUME_NEUTRAL_FIELDS}
    encoded = json.dumps(options, sort_keys=True, default=str).encode("utf-8")
    return {
        "forget_sha256": sha256_path(forget.path),
        "options_sha256": hashlib.sha256(encoded).hexdigest(),
        "writer": {key: writer.describe().get(key) for key in ("backend", "model", "digest")},
        "judge": {key: judge.describe().get(key) for key in ("backend", "model", "digest")},
    }


def _settings(config: AugmentConfig) -> CallSettings:
    return CallSettings(temperature=config.temperature, seed=config.seed, max_tokens=config.max_tokens,
                        timeout=config.timeout, parse_retries=config.parse_retries)


def run_augment(config: AugmentConfig, progress: Optional[ProgressCallback] = None) -> AugmentResult:
    """Augment the forget set of ``config``; return where the outputs are and the summary.

    Raises InputError for an empty or invalid forget set, BackendError when a
    backend or model is unavailable before the run starts, and
    RunFolderError when ``config.out`` cannot be used. Items that fail during
    the run are recorded in the summary instead of raising.
    """
    config.validate()
    forget = load_qa_set(config.forget, "forget", config.question_field, config.answer_field)
    mix_pairs = load_qa_set(config.mix_in, "mix-in").pairs if config.mix_in else []
    folder = RunFolder(config.out, STAGE)
    resuming = folder.prepare(force=config.force, resumable=True)
    started = time.monotonic()
    with folder:
        folder.attach_log()
        logger.info("augmenting %d forget items from %s into %s", len(forget), config.forget, config.out)
        folder.write_config(config)
        writer, judge = open_backends(config)
        try:
            descriptions = {"writer": writer.describe(), "judge": judge.describe()}
            store = ItemStore(folder.file(ITEMS_FOLDER))
            done = store.restore(_fingerprint(config, forget, writer, judge), resuming)
            folder.write_manifest(
                inputs={"forget": config.forget, "mix_in": config.mix_in},
                extra={**descriptions, "options": _settings(config).__dict__, "resumed_items": len(done)},
            )
            context = ItemContext(config, writer, judge, _settings(config), _settings(config))
            outcomes = _run_items(forget, done, context, store, progress)
        finally:
            writer.close()
            if judge is not writer:
                judge.close()
        return _finish(folder, config, forget, outcomes, mix_pairs, descriptions, time.monotonic() - started)


def _run_items(forget: QASet, done: dict[int, ItemOutcome], context: ItemContext, store: ItemStore,
               progress: Optional[ProgressCallback]) -> list[ItemOutcome]:
    results = dict(done)
    total = len(forget.pairs)
    todo = [(index, pair) for index, pair in enumerate(forget.pairs) if index not in results]
    report(progress, STAGE, len(results), total, "augment", failed=0)
    failed = 0
    def process_and_save(index: int, pair: Any) -> ItemOutcome:
        # Saved by the worker, so an item that finishes while the run is being
        # interrupted is kept for the resumed run.
        outcome = process_item(index, pair, context)
        store.save(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=context.config.concurrency, thread_name_prefix="augment") as pool:
        futures = [pool.submit(process_and_save, index, pair) for index, pair in todo]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                results[outcome.index] = outcome
                failed += int(not outcome.ok)
                report(progress, STAGE, len(results), total, f"augment {outcome.item_id}", failed=failed,
                       calls=sum(item.stats.llm_calls for item in results.values()))
        except BaseException:
            # NOTE: items already running finish their current request before the run stops.
            for future in futures:
                future.cancel()
            raise
    report(progress, STAGE, total, total, "augment", done=True, failed=failed)
    return [results[index] for index in sorted(results)]


def _finish(folder: RunFolder, config: AugmentConfig, forget: QASet, outcomes: list[ItemOutcome],
            mix_pairs: list, descriptions: dict[str, Any], wall_seconds: float) -> AugmentResult:
    judge_model = descriptions["judge"].get("model")
    records: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.ok:
            records.extend(outcome.records(judge_model))
            if config.completions:
                records.extend(completion_records(outcome, config.completions_per_item))
    forget_records = len(records)
    mix_summary: dict[str, Any] = {"added": 0}
    if mix_pairs:
        guards = [LeakGuard(pair.question, pair.answer) for pair in forget.pairs]
        mixed = mix_in_records(mix_pairs, config.mix_ratio, forget_records, config.seed, guards)
        records.extend(mixed.records)
        mix_summary = {"added": len(mixed.records), "requested": mixed.requested, "dropped": mixed.dropped,
                       "available": mixed.available}
    extra = {
        "completions": sum(1 for record in records if record["variant"] == "completion"),
        "mix_in": mix_summary,
        "rounds": config.rounds,
        "fallback": config.fallback,
        **descriptions,
    }
    summary = build_summary(outcomes, len(forget.pairs), records, wall_seconds, extra)
    augmented_path: Optional[Path] = folder.file(AUGMENTED_FILE)
    if any(outcome.ok for outcome in outcomes):
        write_jsonl(augmented_path, records)
    else:
        augmented_path.unlink(missing_ok=True)
        augmented_path = None
    summary_path = folder.file(SUMMARY_FILE)
    atomic_write_json(summary_path, summary)
    for warning in summary["warnings"]:
        logger.warning("%s", warning)
    if augmented_path is None:
        first = next(iter(summary["failures"].values()), "no item finished")
        folder.mark_failed(f"all {len(outcomes)} forget items failed; first error: {first}")
    else:
        folder.mark_complete(complete=summary["complete"], items=summary["items"], records=summary["records"],
                             failed_items=len(summary["failed_items"]))
    return AugmentResult(out=folder.path, augmented_path=augmented_path, summary_path=summary_path, summary=summary)
