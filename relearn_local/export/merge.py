"""Merge the adapter into a 16-bit or float32 copy of the base and check that the merge kept what it should.

The base is loaded unquantized in the chosen precision: merging a LoRA into
4-bit weights rounds most of its update away, so a quantized base is
rejected before this step. The check compares logits on forget questions:
the merged model must match the adapter model within ``MERGE_TOLERANCE`` and
differ from the base by at least ``MIN_ADAPTER_EFFECT``, otherwise the
adapter merged nothing (or was never trained). Tied embeddings must stay
tied. The merged model also produces the greedy answers the parity check
compares the GGUF with, so it is loaded only once.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..chat_formats import ChatFormat, encode_prompt
from ..errors import ExportError, ModelError
from ..progress import ProgressCallback, report
from ..runs import atomic_write_json
from .gguf_checks import ServingExpectations, serving_expectations

logger = logging.getLogger(__name__)

# Largest absolute logit difference allowed between the merged model and the
# adapter model, per merge precision. Measured on Gemma 3 270M with a rank-8
# adapter: about 2e-5 in float32; bfloat16 rounding of the merged weights
# moves logits by up to a few tenths.
MERGE_TOLERANCE = {"float32": 1e-3, "bfloat16": 1.0, "float16": 0.25}
# Smallest largest-logit change that counts as the adapter doing something.
MIN_ADAPTER_EFFECT = 1e-2
# Prompt positions (from the end) whose logits are compared.
CHECKED_POSITIONS = 8
# Threads for the check forwards and greedy answers. These batches are a few
# rows wide, so a second thread gains little on an idle 2-core machine, while
# on a busy one (an Ollama server, other jobs) OpenMP's spin-waiting made them
# 5 to 10 times slower than one thread (Gemma 3 270M, load average 6 on 2 cores).
INFERENCE_THREADS = 1
TOKENIZER_FILES = ("tokenizer.model",)


@dataclass
class MergeCheck:
    """Logit comparison of the merged model with the adapter model and with the base, on forget questions."""

    questions: int
    dtype: str
    tolerance: float
    min_effect: float
    max_diff_to_adapter: float
    max_diff_to_base: float
    mean_diff_to_base: float
    tied_embeddings: Optional[bool]

    @property
    def passed(self) -> bool:
        return self.max_diff_to_adapter <= self.tolerance and self.max_diff_to_base >= self.min_effect


@dataclass
class GreedyAnswer:
    """A greedy answer: the prompt's ids, the generated ids (up to and including the stop token) and the text."""

    question: str
    prompt_ids: list[int]
    token_ids: list[int]
    text: str


@dataclass
class MergeOutcome:
    check: MergeCheck
    answers: list[GreedyAnswer]
    expectations: ServingExpectations
    merged_dir: Optional[Path] = None
    parameters: int = 0
    notes: list[str] = field(default_factory=list)


def merge_adapter(base_dir: Path, adapter_dir: Path, chat_format: ChatFormat, dtype_name: str,
                  check_questions: list[str], parity_questions: list[str], parity_tokens: int,
                  target: Optional[Path], base_record: dict[str, Any],
                  progress: Optional[ProgressCallback] = None) -> MergeOutcome:
    """Load base + adapter, check and merge them, answer the parity questions, and save to ``target`` if given."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    total = 5 if target is not None else 4
    report(progress, "merge", 0, total, "loading the base model and the adapter")
    dtype = getattr(torch, dtype_name)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
        try:
            model = PeftModel.from_pretrained(base, str(adapter_dir))
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise ModelError(
                f"the adapter {adapter_dir} does not load onto the base {base_dir} ({exc}); "
                "pass the base it was trained on with --base"
            ) from exc
    model.eval()
    prompts = [encode_prompt(tokenizer, chat_format, question) for question in check_questions]
    report(progress, "merge", 1, total, "computing logits with and without the adapter")
    with _torch_threads(INFERENCE_THREADS), torch.inference_mode():
        adapter_logits = _batch_logits(model, prompts)
        with model.disable_adapter():
            base_logits = _batch_logits(model, prompts)
        report(progress, "merge", 2, total, "merging the adapter into the weights")
        merged = model.merge_and_unload()
        merged.eval()
        merged_logits = _batch_logits(merged, prompts)
    check = _compare(adapter_logits, base_logits, merged_logits, dtype_name, _tied_state(merged))
    del adapter_logits, base_logits, merged_logits
    _raise_on_failed_check(check)
    expectations = serving_expectations(tokenizer, chat_format, merged.generation_config.eos_token_id)
    report(progress, "merge", 3, total, "greedy answers of the merged model")
    with _torch_threads(INFERENCE_THREADS):
        answers = greedy_answers(merged, tokenizer, chat_format, parity_questions, parity_tokens,
                                 expectations.generation_eos_ids)
    outcome = MergeOutcome(check, answers, expectations, parameters=sum(p.numel() for p in merged.parameters()))
    if target is not None:
        report(progress, "merge", 4, total, f"saving the merged checkpoint to {target}")
        with _quiet_transformers():
            outcome.merged_dir = save_merged(merged, tokenizer, chat_format, expectations, base_dir, target,
                                             base_record)
    report(progress, "merge", total, total, "merged and checked the adapter", done=True)
    del merged, model, base
    gc.collect()
    return outcome


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(min(count, previous))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars and PEFT's deprecation warning while loading and saving.

    The CLI draws its own progress; the bars would interleave with it on stderr.
    """
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
            yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _batch_logits(model: Any, prompts: list[list[int]]) -> list[Any]:
    """Return the logits of each prompt's last ``CHECKED_POSITIONS`` tokens, from one left-padded batch.

    Only the last positions go through the output layer: with Gemma's
    262,144-token vocabulary it dominates the cost, and the last position is
    the one that predicts the answer. Position ids skip the padding, so each
    row is computed as if alone.
    """
    import torch

    if not prompts:
        return []
    width = max(len(ids) for ids in prompts)
    keep = min(CHECKED_POSITIONS, min(len(ids) for ids in prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    return list(logits.float())


def _tied_state(model: Any) -> Optional[bool]:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not getattr(config, "tie_word_embeddings", False):
        return None
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    return head is not None and head.weight.data_ptr() == embeddings.weight.data_ptr()


def _compare(adapter: list, base: list, merged: list, dtype_name: str, tied: Optional[bool]) -> MergeCheck:
    to_adapter = max((float((m - a).abs().max()) for m, a in zip(merged, adapter)), default=0.0)
    to_base = [(m - b).abs() for m, b in zip(merged, base)]
    return MergeCheck(
        questions=len(merged), dtype=dtype_name, tolerance=MERGE_TOLERANCE[dtype_name],
        min_effect=MIN_ADAPTER_EFFECT, max_diff_to_adapter=to_adapter,
        max_diff_to_base=max((float(d.max()) for d in to_base), default=0.0),
        mean_diff_to_base=sum(float(d.mean()) for d in to_base) / max(len(to_base), 1),
        tied_embeddings=tied,
    )


def _raise_on_failed_check(check: MergeCheck) -> None:
    if check.tied_embeddings is False:
        raise ExportError("merging untied the output head from the input embeddings; nothing was saved")
    if check.max_diff_to_adapter > check.tolerance:
        raise ExportError(
            f"the merged model's logits differ from the adapter model's by up to {check.max_diff_to_adapter:.3g} "
            f"(allowed {check.tolerance:g} in {check.dtype}); the merge is wrong, nothing was saved"
        )
    if check.max_diff_to_base < check.min_effect:
        raise ExportError(
            f"the adapter changes the base model's logits by at most {check.max_diff_to_base:.3g} on "
            f"{check.questions} forget questions, so the merged model is the base model; "
            "was the adapter trained? (check the train run's loss curve)"
        )


def greedy_answers(model: Any, tokenizer: Any, chat_format: ChatFormat, questions: list[str], max_tokens: int,
                   eos_ids: list[int]) -> list[GreedyAnswer]:
    """Answer the questions greedily in one left-padded batch, from the prompts training used (one BOS).

    Each answer keeps its tokens up to and including the first EOS id.
    """
    import torch

    if not questions:
        return []
    prompts = [encode_prompt(tokenizer, chat_format, question) for question in questions]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    width = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    with torch.inference_mode():
        output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                eos_token_id=eos_ids, pad_token_id=pad_id)
    answers = []
    for row, (question, prompt) in enumerate(zip(questions, prompts)):
        new_ids = [int(token) for token in output[row, width:]]
        stop = next((position for position, token in enumerate(new_ids) if token in eos_ids), None)
        kept = new_ids if stop is None else new_ids[:stop + 1]
        text = tokenizer.decode(kept if stop is None else kept[:-1], skip_special_tokens=False)
        answers.append(GreedyAnswer(question, prompt, kept, chat_format.cut_at_stop(text)))
    return answers


def save_merged(model: Any, tokenizer: Any, chat_format: ChatFormat, expectations: ServingExpectations,
                base_dir: Path, target: Path, base_record: dict[str, Any]) -> Path:
    """Save the merged checkpoint with tokenizer, chat template and end-of-turn stops, written whole then renamed."""
    for attribute in ("quantization_config",):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)
    model.config.use_cache = True
    model.generation_config.eos_token_id = list(expectations.generation_eos_ids)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.chat_template = chat_format.jinja_template()
    tokenizer.save_pretrained(str(staging))
    for name in TOKENIZER_FILES:
        if (base_dir / name).exists() and not (staging / name).exists():
            shutil.copy2(base_dir / name, staging / name)
    atomic_write_json(staging / "relearn_base.json", base_record)
    config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise ExportError(f"{staging / 'config.json'} still has a quantization_config; the merged copy is not saved")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    logger.info("merged checkpoint written to %s", target)
    return target
