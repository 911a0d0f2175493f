"""The typed configuration of the augment stage, and the one table of variant types."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ..config import option
from ..errors import ConfigError

# Question variants written for each forget item, in output order. The
# descriptions go into prompts and help text.
VARIANT_TYPES: dict[str, str] = {
    "rephrase": "the same question in other words",
    "context": "the question with a sentence of context that explains why it is asked",
    "noise": "the question with typos and informal wording",
    "reverse": "a question about the same relation asked from the other side",
}
ORIGINAL = "original"
COMPLETION = "completion"
MIX_IN = "mix_in"
# Every value of a record's "variant" field.
RECORD_VARIANTS = (ORIGINAL, *VARIANT_TYPES, COMPLETION, MIX_IN)

BACKEND_CHOICES = ("auto", "ollama", "llamacpp")
FALLBACK_CHOICES = ("early", "last", "none")


@dataclass
class AugmentConfig:
    """Options of ``relearn-local augment``."""

    forget: Path = option(Path("forget.json"), "Forget set to augment (JSON, JSON Lines, CSV or a saved dataset).")
    out: Path = option(Path("runs/augment"), "Run folder for augmented.jsonl, summary.json and the run files.")
    question_field: Optional[str] = option(None, "Record field holding the question; detected when unset.")
    answer_field: Optional[str] = option(None, "Record field holding the answer; detected when unset.")
    backend: Literal["auto", "ollama", "llamacpp"] = option(
        "auto", "Writer backend: ollama, llamacpp, or auto (Ollama when it responds, else the embedded llama.cpp model).")
    model: Optional[str] = option(
        None, "Writer model: an Ollama model name, or a GGUF path for llamacpp. Unset: the judge model when given, "
              "else llama3.2 on Ollama or the embedded Gemma 3 270M on llamacpp.")
    judge: Optional[str] = option(None, "Judge model; unset means the writer model.")
    judge_backend: Optional[Literal["ollama", "llamacpp"]] = option(
        None, "Judge backend; unset means the writer's backend.")
    ollama_host: Optional[str] = option(None, "Ollama server, such as 127.0.0.1:11434; unset means $OLLAMA_HOST or 127.0.0.1:11434.")
    timeout: float = option(120.0, "Seconds one request may take per try before it counts as failed.")
    retries: int = option(2, "Extra tries of a request after a connection error, timeout or server error (5xx).")
    rounds: int = option(3, "Rounds of rewriting for answers the judge or the leak guard rejected.")
    concurrency: int = option(2, "Forget items processed at the same time (requests in flight).")
    seed: int = option(0, "Seed sent with every request; a retry of an unusable reply adds the attempt number.")
    temperature: float = option(0.0, "Sampling temperature of the writer and the judge.")
    max_tokens: int = option(512, "Output-token limit of every request.")
    fallback: Literal["early", "last", "none"] = option(
        "early", "Template answers for questions the writer fails: 'early' judges them beside the writer's "
                 "answers from the first round, 'last' only in the last round, 'none' never.")
    answers_per_call: int = option(5, "Questions answered per writer call (1 asks once per question).")
    verdicts_per_call: int = option(10, "Answers judged per judge call, when the context window holds them.")
    variants_per_call: int = option(4, "Question variants written per writer call (1 asks once per variant).")
    parse_retries: int = option(1, "Extra tries, with another seed, after a reply that is not valid JSON for the schema.")
    completions: bool = option(True, "Add sentence-completion samples made from accepted answers.")
    completions_per_item: int = option(1, "Sentence-completion samples per forget item.")
    mix_in: Optional[Path] = option(None, "Local file of generic question/answer pairs to mix into the output.")
    mix_ratio: float = option(0.0, "Mix-in pairs per accepted forget record (0.5 adds one pair per two records).")
    allow_sensitive_spans_in_questions: bool = option(
        False, "Skip the leak guard on question variants, so that a variant may name a value of the original "
               "answer (as ReLearn's reverse questions do). The writer sees only the question; answers are "
               "always checked.")
    cache: bool = option(True, "Reuse cached replies; off asks every request again and refreshes the cache.")
    cache_dir: Optional[Path] = option(None, "Reply cache folder; unset means $RELEARN_HOME/cache/replies.")
    n_ctx: int = option(8192, "Context window of llama.cpp models, in tokens.")
    force: bool = option(False, "Overwrite a finished run in the output folder.")

    def validate(self) -> None:
        checks = [
            (self.timeout > 0, f"timeout must be above 0 seconds, got {self.timeout}"),
            (self.retries >= 0, f"retries must be 0 or more, got {self.retries}"),
            (self.rounds >= 1, f"rounds must be 1 or more, got {self.rounds}"),
            (self.concurrency >= 1, f"concurrency must be 1 or more, got {self.concurrency}"),
            (self.temperature >= 0, f"temperature must be 0 or more, got {self.temperature}"),
            (self.max_tokens >= 16, f"max_tokens must be 16 or more, got {self.max_tokens}"),
            (self.answers_per_call >= 1, f"answers_per_call must be 1 or more, got {self.answers_per_call}"),
            (self.verdicts_per_call >= 1, f"verdicts_per_call must be 1 or more, got {self.verdicts_per_call}"),
            (self.variants_per_call in (1, len(VARIANT_TYPES)),
             f"variants_per_call must be 1 or {len(VARIANT_TYPES)}, got {self.variants_per_call}"),
            (self.parse_retries >= 0, f"parse_retries must be 0 or more, got {self.parse_retries}"),
            (self.completions_per_item >= 0, f"completions_per_item must be 0 or more, got {self.completions_per_item}"),
            (0 <= self.mix_ratio <= 10, f"mix_ratio must be between 0 and 10, got {self.mix_ratio}"),
            (self.n_ctx >= 512, f"n_ctx must be 512 or more, got {self.n_ctx}"),
        ]
        for passed, message in checks:
            if not passed:
                raise ConfigError(message)
        if self.mix_ratio > 0 and self.mix_in is None:
            raise ConfigError(f"mix_ratio is {self.mix_ratio} but no mix-in file is given; pass --mix-in FILE")
        if self.mix_in is not None and self.mix_ratio == 0:
            raise ConfigError("a mix-in file is given but mix_ratio is 0; pass --mix-ratio, for example 0.5")
