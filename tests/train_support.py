"""Helpers for the train and inject tests: small augment run folders, QA files and configs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_pairs(name: str, count: int) -> list[dict[str, str]]:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))[:count]


def write_qa_file(path: Path, pairs: Iterable[dict[str, str]]) -> Path:
    path.write_text(json.dumps(list(pairs), ensure_ascii=False), encoding="utf-8")
    return path


def safe_answer(question: str) -> str:
    return "I can't share personal details about that person; they are private."


def write_augmented(folder: Path, pairs: list[dict[str, str]], variants: int = 2,
                    summary: Optional[dict[str, Any]] = None, items: Optional[int] = None) -> Path:
    """Write an augment run folder as the augment stage does: accepted records and a summary."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, pair in enumerate(pairs, start=1):
        for variant in range(variants):
            question = pair["question"] if variant == 0 else f"Could you tell me: {pair['question']}"
            rows.append({
                "id": f"{number}-{variant}", "item_id": str(number), "question_id": f"{number}-{variant}",
                "variant": "original" if variant == 0 else "rephrase", "question": question,
                "answer": safe_answer(question), "verdict": None, "guard": None, "rounds": 1,
            })
    (folder / "augmented.jsonl").write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    total = items if items is not None else len(pairs)
    default_summary = {
        "complete": total == len(pairs), "items": total, "items_with_accepted_answer": len(pairs),
        "failed_items": [str(number) for number in range(len(pairs) + 1, total + 1)],
        "per_variant": {"original": len(pairs), "rephrase": len(pairs) * (variants - 1)},
    }
    (folder / "summary.json").write_text(json.dumps(summary or default_summary), encoding="utf-8")
    return folder


def train_config(base: Path, out: Optional[Path], augmented: Optional[Path] = None, retain: Optional[Path] = None,
                 **overrides: Any):
    """A TrainConfig sized for the tiny model: short sequences, small batches, one epoch."""
    from relearn_local.config import build_config
    from relearn_local.train.config import TrainConfig

    values: dict[str, Any] = {
        "base": str(base), "out": out, "augmented": augmented, "retain": retain, "batch_size": 2,
        "epochs": 1, "max_length": 128, "learning_rate": 1e-3, "save_steps": 1000, "lora_rank": 4,
        "lora_alpha": 8,
    }
    values.update(overrides)
    return build_config(TrainConfig, None, values)


def standard_inputs(tmp_path: Path, forget_count: int = 4, retain_count: int = 6) -> tuple[Path, Path, Path]:
    """Write a forget file, its augment folder and a retain file from the examples; return their paths."""
    forget_pairs = example_pairs("forget.json", forget_count)
    forget = write_qa_file(tmp_path / "forget.json", forget_pairs)
    augmented = write_augmented(tmp_path / "augmented", forget_pairs)
    retain = write_qa_file(tmp_path / "retain.json", example_pairs("retain.json", retain_count))
    return forget, augmented, retain


def read_metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
