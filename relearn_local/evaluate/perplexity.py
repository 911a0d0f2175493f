"""Perplexity of each answer given its question under a fixed reference model.

The question is rendered as a chat prompt of the reference model's family and
the answer follows it as the model's turn, tokenized separately so no token
straddles the boundary (``chat_formats.encode_example``). Only the answer's
own tokens are scored: the prompt and the end-of-turn marker after the answer
carry no loss. Answers are scored in batches of similar length.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..chat_formats import ChatFormat, encode_example, get_chat_format
from ..errors import ModelError
from ..progress import ProgressCallback, report

logger = logging.getLogger(__name__)

# Answer positions whose logits are computed at once (256 x 262k vocabulary x 4 bytes = 256 MiB).
LOGIT_SLICE = 256


@dataclass
class PerplexityScore:
    """Perplexity of one answer; ``value`` is None (with ``reason``) when it cannot be computed."""

    value: Optional[float]
    tokens: int
    truncated: bool = False
    reason: Optional[str] = None


class PerplexityScorer:
    """Scores answers under a reference causal LM held in memory."""

    def __init__(self, tokenizer: Any, model: Any, chat_format: ChatFormat, description: dict[str, Any],
                 max_answer_tokens: int = 1024, batch_size: int = 8):
        self.tokenizer = tokenizer
        self.model = model
        self.chat_format = chat_format
        self.description = description
        self.max_answer_tokens = max_answer_tokens
        self.batch_size = batch_size
        self._turn_end_ids = list(tokenizer(chat_format.turn_end, add_special_tokens=False)["input_ids"])
        # Sequences never exceed the model's context, whatever max_answer_tokens is set to.
        self._max_positions = int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)

    @classmethod
    def load(cls, spec: str, max_answer_tokens: int = 1024, batch_size: int = 8) -> "PerplexityScorer":
        """Load the reference model ``spec`` ('gemma3-270m', an HF folder or a GGUF) in float32."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_base

        resolved = resolve_base(spec, need_hf=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(resolved.hf_path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(resolved.hf_path), dtype=torch.float32,
                                                         local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"--reference-model {spec}: transformers cannot load {resolved.hf_path} ({exc})") from exc
        model.eval()
        return cls(tokenizer, model, get_chat_format(resolved.family), resolved.describe(), max_answer_tokens,
                   batch_size)

    def encode(self, question: str, answer: str) -> tuple[list[int], int, int, bool]:
        """Return (input ids, prompt length, scored answer tokens, truncated) for one pair."""
        example = encode_example(self.tokenizer, self.chat_format, question, answer)
        ids = example.input_ids
        answer_end = len(ids)
        width = len(self._turn_end_ids)
        if width and ids[-width:] == self._turn_end_ids:
            answer_end -= width
        answer_tokens = answer_end - example.prompt_length
        limit = min(self.max_answer_tokens, self._max_positions - example.prompt_length)
        truncated = answer_tokens > limit
        if truncated:
            answer_tokens = max(0, limit)
        return ids[:example.prompt_length + answer_tokens], example.prompt_length, answer_tokens, truncated

    def score(self, pairs: Sequence[tuple[str, str]], progress: Optional[ProgressCallback] = None,
              task: str = "perplexity") -> list[PerplexityScore]:
        """Score (question, answer) pairs; an answer without tokens gets no value."""
        encoded = [self.encode(question, answer) for question, answer in pairs]
        scores: list[Optional[PerplexityScore]] = [None] * len(pairs)
        pending = []
        for index, (ids, prompt_length, answer_tokens, truncated) in enumerate(encoded):
            if answer_tokens <= 0:
                reason = "the prompt fills the reference model's context" if truncated else "empty answer"
                scores[index] = PerplexityScore(None, 0, truncated, reason=reason)
            else:
                pending.append(index)
        # Sorting by length keeps padding, and so wasted compute, small within a batch.
        pending.sort(key=lambda index: len(encoded[index][0]))
        report(progress, task, len(pairs) - len(pending), len(pairs), "perplexity")
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start:start + self.batch_size]
            for index, mean_nll in zip(batch, self._mean_nll([encoded[index] for index in batch])):
                scores[index] = _to_score(mean_nll, encoded[index][2], encoded[index][3])
            report(progress, task, len(pairs) - len(pending) + start + len(batch), len(pairs), "perplexity")
        report(progress, task, len(pairs), len(pairs), done=True)
        return [score for score in scores if score is not None]

    def _mean_nll(self, batch: Sequence[tuple[list[int], int, int, bool]]) -> list[float]:
        """Mean negative log-likelihood of each sequence's answer tokens.

        The transformer body runs once for the whole batch. Logits are then
        computed only at answer positions, gathered across the batch (one pass
        over the output matrix serves every row) and in slices, because full
        logits for a 262k-token vocabulary would take gigabytes per batch.
        """
        import torch

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(ids) for ids, *_ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, *_rest) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention[row, :len(ids)] = 1
        head = self.model.get_output_embeddings()
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        with torch.inference_mode():
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            # Position t predicts token t + 1, so answer token k is predicted from position k - 1.
            states = torch.cat([hidden[row, prompt - 1:prompt - 1 + count]
                                for row, (_, prompt, count, _) in enumerate(batch)])
            targets = torch.cat([input_ids[row, prompt:prompt + count]
                                 for row, (_, prompt, count, _) in enumerate(batch)])
            losses = []
            for start in range(0, len(targets), LOGIT_SLICE):
                logits = head(states[start:start + LOGIT_SLICE]).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                losses.append(torch.nn.functional.cross_entropy(logits, targets[start:start + LOGIT_SLICE],
                                                                reduction="none"))
            per_token = torch.cat(losses)
        counts = [count for _, _, count, _ in batch]
        return [float(part.sum()) / count for part, count in zip(per_token.split(counts), counts)]

    def close(self) -> None:
        self.model = None


def _to_score(mean_nll: float, tokens: int, truncated: bool) -> PerplexityScore:
    if not math.isfinite(mean_nll):
        return PerplexityScore(None, tokens, truncated, reason="non-finite loss")
    try:
        value = math.exp(mean_nll)
    except OverflowError:
        return PerplexityScore(None, tokens, truncated, reason="perplexity overflows a float")
    return PerplexityScore(value, tokens, truncated)
