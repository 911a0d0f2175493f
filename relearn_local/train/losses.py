"""Loss terms: cross-entropy on answer tokens, KL to the reference model on real tokens, NPO, gradient ascent.

Logits are computed only where a loss needs them. For the common causal-LM
architectures the decoder's last hidden states are taken, and the output
head runs on the selected positions alone; with Gemma 3's 262,144-token
vocabulary the head costs more than the rest of the 270M model, so skipping
prompt and padding positions saves most of the work. Many positions at once
go through the head in chunks whose logits are recomputed in the backward
pass instead of kept.

Every sum here is normalised by the count of real positions in the whole
optimizer step, so padding never contributes and gradient accumulation
gives the same update as one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Architectures whose causal-LM head is the output embedding plus optional
# final-logit soft-capping, so hidden states plus the head reproduce forward().
HIDDEN_STATE_HEAD_TYPES = frozenset({
    "gemma", "gemma2", "gemma3", "gemma3_text", "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2",
})
# Logit elements per chunk: 64M float32 values, 256 MiB.
CHUNK_ELEMENTS = 64 * 1024 * 1024


class ModelView:
    """The parts of a (PEFT-wrapped) causal LM that the losses use: decoder, output head, soft-capping."""

    def __init__(self, model: Any):
        self.model = model
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.causal = causal
        text_config = causal.config.get_text_config()
        self.model_type = causal.config.model_type
        self.uses_hidden_states = self.model_type in HIDDEN_STATE_HEAD_TYPES
        self.decoder = causal.get_decoder() if self.uses_hidden_states else None
        self.head = causal.get_output_embeddings()
        self.softcap = getattr(text_config, "final_logit_softcapping", None)
        self.vocab_size = text_config.vocab_size

    def rows(self, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Return one row per selected position: the final hidden state, or the logits on the fallback path."""
        return self.states(batch)[mask]

    def states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return the final hidden state at every position, or the logits on the fallback path."""
        if self.decoder is not None:
            output = self.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            return output.last_hidden_state
        extra = {}
        if self.model_type == "gemma3":
            # The multimodal Gemma 3 class expects token types; 0 marks text.
            extra["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        output = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **extra
        )
        return output.logits

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            return rows.float()
        logits = self.head(rows).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @property
    def chunk_rows(self) -> int:
        return max(1, CHUNK_ELEMENTS // max(1, self.vocab_size))


def shifted_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return, per position, the label of the next token (-100 where nothing is supervised)."""
    labels = batch["labels"]
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    return targets


def token_terms(view: ModelView, rows: torch.Tensor, targets: torch.Tensor,
                reference: Optional[tuple[ModelView, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-row negative log-likelihood (0 where the target is -100) and per-row KL(reference || model).

    The KL vector is all zeros without ``reference``. Rows beyond one chunk
    are processed chunk by chunk under activation checkpointing, so at most
    one chunk of logits is alive at a time.
    """
    reference_view, reference_rows = reference if reference is not None else (None, None)

    def chunk(model_rows: torch.Tensor, chunk_targets: torch.Tensor, chunk_reference: Optional[torch.Tensor]):
        logits = view.logits(model_rows)
        log_probs = F.log_softmax(logits, dim=-1)
        valid = chunk_targets != -100
        picked = log_probs.gather(-1, chunk_targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll = torch.where(valid, -picked, torch.zeros_like(picked))
        if chunk_reference is None:
            return nll, torch.zeros_like(nll)
        with torch.no_grad():
            reference_log_probs = F.log_softmax(reference_view.logits(chunk_reference), dim=-1)
        kl = (reference_log_probs.exp() * (reference_log_probs - log_probs)).sum(-1)
        return nll, kl

    size = view.chunk_rows
    if rows.shape[0] <= size:
        return chunk(rows, targets, reference_rows)
    nll_parts, kl_parts = [], []
    for start in range(0, rows.shape[0], size):
        piece = slice(start, start + size)
        piece_reference = reference_rows[piece] if reference_rows is not None else None
        nll, kl = checkpoint(chunk, rows[piece], targets[piece], piece_reference, use_reentrant=False)
        nll_parts.append(nll)
        kl_parts.append(kl)
    return torch.cat(nll_parts), torch.cat(kl_parts)


@dataclass
class Objective:
    """Which terms a method combines, with their weights.

    ``forget_term`` is "ce" (learn the answers: relearn and inject), "ascent"
    (maximise their CE: ga, gd) or "npo".
    """

    forget_term: str
    forget_weight: float = 1.0
    retain_weight: float = 0.0
    kl_weight: float = 0.0
    kl_positions: str = "all"
    npo_beta: float = 0.1

    @property
    def needs_retain(self) -> bool:
        return self.retain_weight > 0 or self.kl_weight > 0

    @property
    def needs_reference(self) -> bool:
        return self.kl_weight > 0 or self.forget_term == "npo"


@dataclass
class StepCounts:
    """Denominators of one optimizer step, summed over its micro-batches."""

    forget_tokens: int = 0
    forget_sequences: int = 0
    retain_tokens: int = 0
    kl_positions: int = 0


def batch_counts(objective: Objective, forget: dict[str, torch.Tensor],
                 retain: Optional[dict[str, torch.Tensor]]) -> StepCounts:
    counts = StepCounts(
        forget_tokens=int((shifted_targets(forget) != -100).sum()), forget_sequences=int(forget["input_ids"].shape[0])
    )
    if retain is not None:
        counts.retain_tokens = int((shifted_targets(retain) != -100).sum())
        counts.kl_positions = int(kl_mask(objective, retain).sum())
    return counts


def add_counts(total: StepCounts, part: StepCounts) -> None:
    total.forget_tokens += part.forget_tokens
    total.forget_sequences += part.forget_sequences
    total.retain_tokens += part.retain_tokens
    total.kl_positions += part.kl_positions


def kl_mask(objective: Objective, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Positions the KL term averages over: every real token, or the supervised ones."""
    if objective.kl_positions == "answer":
        return shifted_targets(batch) != -100
    return batch["attention_mask"].bool()


@dataclass
class TermSums:
    """Unnormalised sums of one micro-batch, for metrics."""

    forget_nll: float = 0.0
    retain_nll: float = 0.0
    kl: float = 0.0
    npo: float = 0.0


ReferenceRows = Callable[[dict[str, torch.Tensor], torch.Tensor], tuple[ModelView, torch.Tensor]]


def micro_batch_loss(objective: Objective, view: ModelView, reference: Optional[ReferenceRows],
                     forget: dict[str, torch.Tensor], retain: Optional[dict[str, torch.Tensor]],
                     totals: StepCounts) -> tuple[torch.Tensor, TermSums]:
    """Return this micro-batch's share of the step loss (ready for backward) and its raw sums.

    ``reference(batch, mask)`` returns the reference model's view and rows for
    the masked positions, computed without gradients.
    """
    sums = TermSums()
    retain_states = None
    uses_retain = retain is not None and objective.needs_retain
    if uses_retain and _worth_joining(forget, retain):  # type: ignore[arg-type]
        forget, retain, forget_states, retain_states = _joint_states(view, forget, retain)  # type: ignore[arg-type]
    else:
        forget_states = view.states(forget)
    forget_mask = shifted_targets(forget) != -100
    forget_rows = forget_states[forget_mask]
    forget_targets = shifted_targets(forget)[forget_mask]
    nll, _ = token_terms(view, forget_rows, forget_targets)
    sums.forget_nll = float(nll.detach().sum())
    if objective.forget_term == "ce":
        loss = objective.forget_weight * nll.sum() / totals.forget_tokens
    elif objective.forget_term == "ascent":
        loss = -objective.forget_weight * nll.sum() / totals.forget_tokens
    else:
        npo = _npo_sum(objective, view, reference, forget, forget_mask, nll)
        sums.npo = float(npo.detach())
        loss = objective.forget_weight * npo / totals.forget_sequences
    if uses_retain:
        retain_loss, sums.retain_nll, sums.kl = _retain_terms(
            objective, view, reference, retain, totals, retain_states  # type: ignore[arg-type]
        )
        loss = loss + retain_loss
    return loss, sums


# Forget and retain batches share one forward pass unless padding them to one
# width would add more than this share of extra positions.
JOIN_PADDING_LIMIT = 0.25


def _worth_joining(forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor]) -> bool:
    forget_rows, forget_width = forget["input_ids"].shape
    retain_rows, retain_width = retain["input_ids"].shape
    separate = forget_rows * forget_width + retain_rows * retain_width
    joined = (forget_rows + retain_rows) * max(forget_width, retain_width)
    return joined <= separate * (1 + JOIN_PADDING_LIMIT)


def pad_batch(batch: dict[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a collated batch to ``width`` positions (attention 0, label -100)."""
    extra = width - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    return {
        "input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_id),
        "labels": F.pad(batch["labels"], (0, extra), value=-100),
        "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0),
    }


def _joint_states(view: ModelView, forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor]):
    """Run forget and retain rows through the model in one pass: fewer, larger matrix products."""
    width = max(forget["input_ids"].shape[1], retain["input_ids"].shape[1])
    # Padded positions are masked out of attention and loss, so any valid token id serves as padding.
    forget, retain = pad_batch(forget, width, 0), pad_batch(retain, width, 0)
    joined = {name: torch.cat([forget[name], retain[name]]) for name in forget}
    states = view.states(joined)
    rows = forget["input_ids"].shape[0]
    return forget, retain, states[:rows], states[rows:]


def _npo_sum(objective: Objective, view: ModelView, reference: Optional[ReferenceRows],
             forget: dict[str, torch.Tensor], mask: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
    """Sum over sequences of (2 / beta) * log(1 + (p_model / p_reference) ** beta), on whole-answer likelihoods."""
    if reference is None:
        raise ValueError("NPO needs a reference model")
    reference_view, reference_rows = reference(forget, mask)
    with torch.no_grad():
        reference_nll, _ = token_terms(reference_view, reference_rows, shifted_targets(forget)[mask])
    sequence_of_row = mask.nonzero()[:, 0]
    sequences = forget["input_ids"].shape[0]
    model_sequence_nll = torch.zeros(sequences, dtype=nll.dtype, device=nll.device).index_add(0, sequence_of_row, nll)
    reference_sequence_nll = torch.zeros_like(model_sequence_nll).index_add(0, sequence_of_row, reference_nll)
    beta = objective.npo_beta
    # log(p_model / p_ref) = reference NLL - model NLL, so the loss falls as the model NLL rises.
    return (-2.0 / beta * F.logsigmoid(beta * (model_sequence_nll - reference_sequence_nll))).sum()


def _retain_terms(objective: Objective, view: ModelView, reference: Optional[ReferenceRows],
                  retain: dict[str, torch.Tensor], totals: StepCounts,
                  states: Optional[torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    targets = shifted_targets(retain)
    mask = kl_mask(objective, retain) if objective.kl_weight > 0 else targets != -100
    rows = (states if states is not None else view.states(retain))[mask]
    reference_part = None
    if objective.kl_weight > 0:
        if reference is None:
            raise ValueError("the KL term needs a reference model")
        reference_part = reference(retain, mask)
    nll, kl = token_terms(view, rows, targets[mask], reference_part)
    loss = torch.zeros((), dtype=nll.dtype, device=nll.device)
    if objective.retain_weight > 0:
        loss = loss + objective.retain_weight * nll.sum() / max(1, totals.retain_tokens)
    if objective.kl_weight > 0:
        loss = loss + objective.kl_weight * kl.sum() / max(1, totals.kl_positions)
    return loss, float(nll.detach().sum()), float(kl.detach().sum())
