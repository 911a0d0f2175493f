"""Training data: augmented forget sets, tokenization with truncation accounting, batching schedules.

One epoch is one pass over the training (forget) set. Forget batches are
grouped by length inside shuffled windows, so a batch is padded only to its
longest member and pads little. Retain batches come from successive shuffled
passes over the whole retain set, so every retain item is used before any is
repeated, however small the forget set.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..chat_formats import ChatFormat, encode_example
from ..data import QAPair, load_qa_set, read_jsonl
from ..errors import InputError, TrainingError

logger = logging.getLogger(__name__)

AUGMENTED_FILE = "augmented.jsonl"
SUMMARY_FILE = "summary.json"
# Batches sorted by length are formed inside windows of this many batches.
LENGTH_GROUP_WINDOW = 50


@dataclass
class TrainingRecord:
    """One prompt/answer pair to train on; ``item_id`` names the forget item it belongs to."""

    id: str
    item_id: str
    question: str
    answer: str
    variant: str = "original"


@dataclass
class AugmentedSet:
    """The augmented forget set as read from an augment run folder or a QA file."""

    path: Path
    records: list[TrainingRecord]
    items: int | None
    items_with_answer: int
    complete: bool | None
    failed_items: list[str] = field(default_factory=list)
    per_variant: dict[str, int] = field(default_factory=dict)

    @property
    def coverage(self) -> float | None:
        if not self.items:
            return None
        return self.items_with_answer / self.items


def pairs_to_records(pairs: Sequence[QAPair]) -> list[TrainingRecord]:
    return [TrainingRecord(id=pair.id, item_id=pair.id, question=pair.question, answer=pair.answer) for pair in pairs]


def load_augmented(path: Path, question_field: str | None = None, answer_field: str | None = None) -> AugmentedSet:
    """Read an augment run folder (augmented.jsonl and summary.json) or a plain QA file of safe answers."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"--augmented {path}: not found; pass an augment run folder or a QA file")
    if path.is_file():
        qa_set = load_qa_set(path, role="augmented forget", question_field=question_field, answer_field=answer_field)
        records = pairs_to_records(qa_set.pairs)
        logger.warning("%s is a plain QA file without an augment summary; forget-item coverage is not checked", path)
        return AugmentedSet(path, records, None, len(records), None, per_variant={"original": len(records)})
    records_path = path / AUGMENTED_FILE
    if not records_path.exists():
        raise InputError(
            f"--augmented {path}: has no {AUGMENTED_FILE}; run 'relearn-local augment --out {path}' first "
            "or pass a QA file of safe answers"
        )

    records = _read_augmented_records(records_path)
    summary = _read_summary(path / SUMMARY_FILE)
    item_ids = {record.item_id for record in records}
    per_variant: dict[str, int] = {}
    for record in records:
        per_variant[record.variant] = per_variant.get(record.variant, 0) + 1
    if summary is None:
        logger.warning("%s has no %s; forget-item coverage is not checked", path, SUMMARY_FILE)
        return AugmentedSet(path, records, None, len(item_ids), None, per_variant=per_variant)

    items = _summary_int(summary, "items", path)
    with_answer = summary.get("items_with_accepted_answer")
    if not isinstance(with_answer, int) or with_answer != len(item_ids):
        logger.warning(
            "%s: summary counts %s forget items with an accepted answer but %s contains %d; using %d",
            path, with_answer, AUGMENTED_FILE, len(item_ids), len(item_ids),
        )
    failed = [str(item) for item in summary.get("failed_items") or []]
    complete = summary.get("complete")
    return AugmentedSet(
        path, records, items, len(item_ids), bool(complete) if complete is not None else None, failed, per_variant
    )


def _read_augmented_records(records_path: Path) -> list[TrainingRecord]:
    rows = read_jsonl(records_path)
    records: list[TrainingRecord] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=1):
        where = f"{records_path}, record {line}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: is not a JSON object")
        values = {}
        for name in ("question", "answer"):
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: field {name!r} is missing or empty; rerun augment or fix the record")
            values[name] = value
        record_id = str(row.get("id") or line)
        if record_id in seen:
            raise InputError(f"{where}: id {record_id!r} repeats record {seen[record_id]}")
        seen[record_id] = line
        item_id = str(row.get("item_id") or record_id)
        variant = str(row.get("variant") or "original")
        records.append(TrainingRecord(record_id, item_id, values["question"], values["answer"], variant))
    if not records:
        raise TrainingError(
            f"{records_path} contains no accepted training records; rerun augment (check its judge and guard "
            "settings) before training"
        )
    return records


def _read_summary(summary_path: Path) -> dict[str, Any] | None:
    if not summary_path.exists():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{summary_path}: unreadable ({exc}); rerun augment to rewrite it") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{summary_path}: expected a JSON object")
    return summary


def _summary_int(summary: dict[str, Any], key: str, path: Path) -> int:
    value = summary.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{path / SUMMARY_FILE}: field {key!r} = {value!r} is not a count; rerun augment")
    return value


def check_coverage(augmented: AugmentedSet, min_coverage: float) -> None:
    """Warn when augmentation was incomplete; raise TrainingError below ``min_coverage``."""
    coverage = augmented.coverage
    if coverage is None:
        return
    share = f"{augmented.items_with_answer} of {augmented.items} forget items ({coverage:.0%})"
    if coverage < min_coverage:
        raise TrainingError(
            f"only {share} have an accepted answer in {augmented.path}, below --min-forget-coverage "
            f"{min_coverage:g}; rerun augment on the failed items or lower --min-forget-coverage"
        )
    if augmented.complete is False or coverage < 1:
        failed = ", ".join(augmented.failed_items[:10])
        more = f" and {len(augmented.failed_items) - 10} more" if len(augmented.failed_items) > 10 else ""
        logger.warning(
            "augmentation was incomplete: %s have an accepted answer%s; the others are not unlearned",
            share, f" (failed: {failed}{more})" if failed else "",
        )


@dataclass
class Example:
    """One tokenized training example; ``labels`` is -100 on prompt positions."""

    input_ids: list[int]
    labels: list[int]
    source_id: str

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels if label != -100)


@dataclass
class EncodedSet:
    """A tokenized set and what truncation did to it."""

    name: str
    examples: list[Example]
    cut: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(example.length for example in self.examples)

    def truncation_note(self, max_length: int) -> str | None:
        """Describe skipped and cut examples in one line, or return None when truncation touched nothing."""
        if not self.skipped and not self.cut:
            return None
        total = len(self.examples) + len(self.skipped)
        parts = []
        if self.skipped:
            parts.append(
                f"{len(self.skipped)} of {total} examples skipped because the prompt alone reaches max_length "
                f"{max_length} (ids: {_first_ids(self.skipped)})"
            )
        if self.cut:
            parts.append(f"{len(self.cut)} answers cut to fit (ids: {_first_ids(self.cut)})")
        return f"{self.name}: " + "; ".join(parts)


def _first_ids(ids: Sequence[str], shown: int = 10) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def encode_records(name: str, records: Sequence[TrainingRecord], tokenizer: Any, chat_format: ChatFormat,
                   max_length: int) -> EncodedSet:
    """Tokenize records through the chat format; cut long answers, skip examples whose prompt fills max_length.

    Every example kept has at least one supervised token, so no batch reaches
    the loss without any.
    """
    encoded = EncodedSet(name, [])
    for record in records:
        example = encode_example(tokenizer, chat_format, record.question, record.answer)
        if example.prompt_length >= max_length:
            encoded.skipped.append(record.id)
            continue
        input_ids, labels = example.input_ids, example.labels
        if len(input_ids) > max_length:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            encoded.cut.append(record.id)
        encoded.examples.append(Example(input_ids, labels, record.id))
    if not encoded.examples:
        raise TrainingError(
            f"every {name} example's prompt is at least max_length {max_length} tokens long, so no answer "
            "token is left to train on; raise --max-length"
        )
    return encoded


@dataclass
class MicroBatch:
    """Indices into the training (forget) examples and the retain examples of one forward/backward pass."""

    forget: list[int]
    retain: list[int]


@dataclass
class Step:
    """The micro-batches of one optimizer step."""

    epoch: int
    micro_batches: list[MicroBatch]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle indices, sort windows of them by length, cut batches, and shuffle the batch order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * LENGTH_GROUP_WINDOW
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda index: lengths[index], reverse=True)
        batches.extend(chunk[offset:offset + batch_size] for offset in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def build_schedule(forget_lengths: Sequence[int], retain_lengths: Sequence[int], batch_size: int,
                   gradient_accumulation: int, epochs: float, seed: int) -> list[Step]:
    """Lay out every optimizer step of the run.

    An epoch's last step takes the micro-batches left over, so a forget set
    smaller than one effective batch still gives one step per epoch. A
    fractional epoch count keeps that share of the last epoch's steps.
    """
    forget_batch = min(batch_size, len(forget_lengths))
    steps: list[Step] = []
    for epoch in range(math.ceil(epochs)):
        batches = length_grouped_batches(forget_lengths, forget_batch, random.Random(seed * 1_000_003 + epoch))
        epoch_steps = [
            Step(epoch, [MicroBatch(batch, []) for batch in batches[offset:offset + gradient_accumulation]])
            for offset in range(0, len(batches), gradient_accumulation)
        ]
        share = epochs - epoch
        if share < 1:
            epoch_steps = epoch_steps[:max(1, round(len(epoch_steps) * share))]
        steps.extend(epoch_steps)
    if retain_lengths:
        _attach_retain_batches(steps, retain_lengths, batch_size, seed)
    return steps


def _attach_retain_batches(steps: list[Step], retain_lengths: Sequence[int], batch_size: int, seed: int) -> None:
    retain_batch = min(batch_size, len(retain_lengths))
    needed = sum(len(step.micro_batches) for step in steps)
    stream: list[list[int]] = []
    cycle = 0
    while len(stream) < needed:
        rng = random.Random(seed * 1_000_003 + 500_009 + cycle)
        stream.extend(length_grouped_batches(retain_lengths, retain_batch, rng))
        cycle += 1
    position = 0
    for step in steps:
        for micro_batch in step.micro_batches:
            micro_batch.retain = stream[position]
            position += 1


def retain_coverage(steps: Sequence[Step], retain_size: int) -> int:
    """Count the distinct retain examples a schedule uses."""
    used = {index for step in steps for micro_batch in step.micro_batches for index in micro_batch.retain}
    return len(used) if retain_size else 0


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad examples to the longest one; padding gets attention 0 and label -100."""
    import torch

    width = max(example.length for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, :example.length] = torch.tensor(example.input_ids)
        labels[row, :example.length] = torch.tensor(example.labels)
        attention_mask[row, :example.length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
