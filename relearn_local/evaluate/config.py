"""The evaluate stage's typed config and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ..config import option
from ..errors import ConfigError

BACKEND_CHOICES = ("auto", "transformers", "llamacpp", "ollama")
ENTITY_EXTRACTORS = ("auto", "spacy", "rules")
# Backends an LLM judge for NLI can run on, as the prefix of --nli-judge.
JUDGE_BACKENDS = ("ollama", "llamacpp", "transformers")


@dataclass
class EvaluateConfig:
    """Settings of one ``relearn-local evaluate`` run."""

    out: Optional[Path] = option(None, "Run folder for EVAL.json, SUMMARY.json and answers.jsonl.")
    model: Optional[str] = option(
        None,
        "Model to evaluate: an HF folder, a train run folder or adapter folder, a GGUF file, "
        "'gemma3-270m' (embedded) or 'ollama:NAME'.",
    )
    adapter: Optional[Path] = option(
        None, "PEFT adapter (or train run folder) applied on --model; without --model its recorded base is used."
    )
    backend: Literal["auto", "transformers", "llamacpp", "ollama"] = option(
        "auto", "Generation backend; auto picks ollama for 'ollama:NAME', llamacpp for a GGUF, else transformers."
    )
    forget: Optional[Path] = option(None, "Forget set whose answers are scored for forgetting (KFR).")
    retain: Optional[Path] = option(None, "Retain set whose answers are scored for retention (KRR).")
    answers: list[str] = option(
        [],
        "Score existing answers instead of generating: files of {query, ground_truth, generated_response} "
        "records, as FILE (records carry set: forget|retain) or forget=FILE / retain=FILE.",
    )
    question_field: Optional[str] = option(None, "Record field holding the question (detected when unset).")
    answer_field: Optional[str] = option(None, "Record field holding the answer (detected when unset).")
    limit: Optional[int] = option(None, "Evaluate only the first N items of each set.")
    max_new_tokens: int = option(128, "Maximum new tokens per generated answer.")
    temperature: float = option(0.0, "Sampling temperature; 0 decodes greedily, which makes runs repeatable.")
    seed: int = option(0, "Random seed for sampling (unused when greedy).")
    batch_size: int = option(8, "Questions generated together, and answers scored together for perplexity.")
    timeout: Optional[float] = option(
        None, "Seconds per generation or judge request; unset uses the backend's default."
    )
    reference_model: str = option(
        "gemma3-270m",
        "Reference model that scores answer perplexity (PPL): 'gemma3-270m', an HF folder or a GGUF. "
        "Keep it fixed across runs so perplexities compare.",
    )
    ppl: bool = option(True, "Compute perplexity; without it PPL and LS are N/A.")
    max_ppl_tokens: int = option(1024, "Answer tokens scored for perplexity; longer answers are cut to this many.")
    nli_model: Optional[Path] = option(
        None, "Local HF sequence-classification NLI model folder (labels read from its config's id2label)."
    )
    nli_judge: Optional[str] = option(
        None, "LLM judge for NLI as BACKEND:MODEL, such as ollama:llama3 or llamacpp:model.gguf."
    )
    judge_retries: int = option(2, "Extra tries when the NLI judge's reply is not a valid verdict.")
    entity_extractor: Literal["auto", "spacy", "rules"] = option(
        "auto", "Entity extractor: the packaged English spaCy pipeline, or documented regular-expression rules."
    )
    key_nouns: bool = option(
        True, "Count content nouns as entities too (spaCy extractor), as the ReLearn authors' extraction does."
    )
    embedding_model: Optional[Path] = option(
        None, "Sentence-transformers model folder for fuzzy entity matching; unset uses the packaged MiniLM."
    )
    entity_match_threshold: float = option(0.8, "Cosine similarity at which two entities match.", paper=True)
    forget_threshold: float = option(
        0.3, "A forget item counts as forgotten when its entity similarity is at most this.", paper=True
    )
    forget_threshold_few_entities: float = option(
        0.5, "Forget threshold used instead when the ground truth has few entities.", paper=True
    )
    few_entities: int = option(3, "Ground truths with at most this many entities use the few-entities threshold.",
                               paper=True)
    retain_threshold: float = option(
        0.3, "A retain item counts as retained when its entity similarity is at least this.", paper=True
    )
    force: bool = option(False, "Overwrite a finished evaluate run in --out.")

    @property
    def scores_existing_answers(self) -> bool:
        return bool(self.answers)

    def validate(self) -> None:
        """Raise ConfigError on contradictory or out-of-range settings."""
        if self.answers and (self.model or self.adapter):
            raise ConfigError(
                "--answers scores existing answers; drop --model/--adapter, or drop --answers to generate"
            )
        if self.answers and (self.forget or self.retain):
            raise ConfigError(
                "--answers files carry their own questions and ground truths; drop --forget/--retain, "
                "or mark each answers file as forget=FILE or retain=FILE"
            )
        if not self.answers:
            if not self.model and not self.adapter:
                raise ConfigError("pass --model (or --adapter) to generate answers, or --answers FILE to score a file")
            if self.forget is None and self.retain is None:
                raise ConfigError("pass --forget and/or --retain: the questions to answer")
        if self.nli_model is not None and self.nli_judge:
            raise ConfigError("choose one NLI source: --nli-model PATH or --nli-judge BACKEND:MODEL, not both")
        if self.nli_judge:
            parse_judge_spec(self.nli_judge)
        for name in ("max_new_tokens", "batch_size", "max_ppl_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.judge_retries < 0 or self.few_entities < 0:
            raise ConfigError("judge_retries and few_entities must not be negative")
        if self.temperature < 0:
            raise ConfigError(f"temperature must not be negative, got {self.temperature}")
        for name in ("entity_match_threshold", "forget_threshold", "forget_threshold_few_entities",
                     "retain_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie between 0 and 1, got {value}")


def parse_judge_spec(spec: str) -> tuple[str, Optional[str]]:
    """Split --nli-judge BACKEND:MODEL; ``llamacpp`` alone means the embedded model."""
    backend, _, model = spec.partition(":")
    backend = backend.strip().lower()
    if backend not in JUDGE_BACKENDS:
        raise ConfigError(
            f"--nli-judge {spec!r}: unknown backend {backend!r}; write BACKEND:MODEL with BACKEND one of "
            f"{', '.join(JUDGE_BACKENDS)} (for example ollama:llama3)"
        )
    model = model.strip() or None
    if model is None and backend == "ollama":
        raise ConfigError(f"--nli-judge {spec!r}: name the Ollama model, as in ollama:llama3")
    return backend, model
