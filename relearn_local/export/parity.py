"""Parity check: the GGUF, served as the Modelfile specifies, answers like the merged transformers model.

llama-cpp-python loads the GGUF (and the adapter GGUF in adapter mode). Each
forget question is rendered with the Modelfile's TEMPLATE, tokenized with
BOS added exactly when the GGUF's ``add_bos_token`` says so (as Ollama does),
and answered greedily until an end-of-generation token or a Modelfile stop
string. The prompt's token ids must equal the ids training used, and the
first ``COMPARED_TOKENS`` answer tokens must equal the merged model's for
f16 and q8_0. The k-quants round the weights enough to change some answers,
so for them the share of matching answers is reported instead.

Every type must also keep the forgetting: where the original forget answer is
known, the leak guard looks for its sensitive spans in both answers, and a
span the GGUF gives but the merged model does not fails the check. Rounding
can undo an unlearning fine-tune, whose weight changes can be smaller than
the rounding step: Q4_K_M of a demo adapter gave the forgotten home address
again. Without original answers, the k-quants must at least start every
answer with the merged model's first token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..augment.leak_guard import LeakGuard
from ..chat_formats import ChatFormat
from .config import QuantType
from .gguf_checks import ServingExpectations
from .gotemplate import render_ollama_prompt
from .merge import GreedyAnswer
from .modelfile import ParsedModelfile, parse_modelfile
from .quantize import quiet_llama_cpp

logger = logging.getLogger(__name__)

COMPARED_TOKENS = 8
# One thread: greedy decoding of a few short answers gains little from a
# second one, and on a busy 2-core machine two llama.cpp threads were 6 times
# slower than one (Gemma 3 270M Q4_K_M, 3 answers of 12 tokens).
PARITY_THREADS = 1


@dataclass
class ParityItem:
    question: str
    reference_text: str
    gguf_text: str
    reference_tokens: list[int]
    gguf_tokens: list[int]
    prompt_matches_training: bool
    common_prefix: int
    matched: bool
    # Sensitive spans of the original answer found in each answer; None when
    # the original answer is unknown.
    reference_leaks: Optional[list[str]] = None
    gguf_leaks: Optional[list[str]] = None

    @property
    def restored(self) -> list[str]:
        """Spans of the original answer that the GGUF gives and the merged model does not."""
        if self.gguf_leaks is None:
            return []
        return [span for span in self.gguf_leaks if span not in (self.reference_leaks or [])]


@dataclass
class ParityReport:
    """Greedy answers of the GGUF next to the merged model's, with the verdict."""

    quant: str
    strict: bool
    compared_tokens: int
    items: list[ParityItem] = field(default_factory=list)
    stop_problems: list[str] = field(default_factory=list)
    skipped: Optional[str] = None

    @property
    def match_rate(self) -> float:
        return sum(item.matched for item in self.items) / len(self.items) if self.items else 0.0

    @property
    def forgetting_checked(self) -> int:
        return sum(item.gguf_leaks is not None for item in self.items)

    @property
    def restored_items(self) -> list[ParityItem]:
        return [item for item in self.items if item.restored]

    @property
    def outcome(self) -> str:
        """Return one word: passed, failed or skipped."""
        if self.skipped is not None:
            return "skipped"
        return "passed" if self.passed else "failed"

    @property
    def passed(self) -> bool:
        if self.skipped is not None or not self.items:
            return False
        if self.stop_problems or not all(item.prompt_matches_training for item in self.items):
            return False
        if self.restored_items:
            return False
        if self.strict:
            return all(item.matched for item in self.items)
        if self.forgetting_checked < len(self.items):
            return all(item.common_prefix >= 1 for item in self.items)
        return True

    def verdict(self) -> str:
        """One line with the outcome and counts; it names no private span, because reports quote it."""
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        status = "passed" if self.passed else "FAILED"
        parts = [f"{status} for {self.quant} (rule: {self._rule()})"]
        restored = self.restored_items
        if restored:
            parts.append(f"the GGUF gives forgotten facts that the merged model withholds in {len(restored)} of "
                         f"{self.forgetting_checked} answers")
        elif self.forgetting_checked:
            parts.append(f"no forgotten fact came back in {self.forgetting_checked} answers")
        if self.forgetting_checked < len(self.items):
            parts.append(f"{len(self.items) - self.forgetting_checked} answers not checked for forgotten facts "
                         "(original answer unknown)")
        merged_leaks = sum(bool(item.reference_leaks) for item in self.items)
        if merged_leaks:
            # Not a parity failure: the GGUF reproduces the merged model. The user still has to know.
            parts.append(f"the merged model itself gives facts of the original answer in {merged_leaks} of "
                         f"{len(self.items)} answers "
                         "(a training result: measure it with relearn-local evaluate)")
        first_differs = sum(item.common_prefix < 1 for item in self.items)
        if first_differs:
            parts.append(f"the first token differs for {first_differs} of {len(self.items)}")
        parts.append(f"{sum(i.matched for i in self.items)}/{len(self.items)} answers match on the first "
                     f"{self.compared_tokens} tokens")
        if self.stop_problems:
            parts.append("; ".join(self.stop_problems))
        if not all(item.prompt_matches_training for item in self.items):
            parts.append("the Modelfile's prompt tokens differ from training's")
        return "; ".join(parts)

    def _rule(self) -> str:
        rule = "no forgotten fact may come back"
        if self.strict:
            return f"the first {self.compared_tokens} tokens must match for every question, and {rule}"
        if self.forgetting_checked < len(self.items):
            return f"{rule}, and the first token must match where that cannot be checked"
        return f"{rule}, and token matches are only reported"

    def as_dict(self) -> dict[str, Any]:
        return {
            "quant": self.quant, "strict": self.strict, "compared_tokens": self.compared_tokens,
            "passed": self.passed, "match_rate": self.match_rate, "verdict": self.verdict(),
            "forgetting_checked": self.forgetting_checked, "restored_answers": len(self.restored_items),
            "skipped": self.skipped, "stop_problems": self.stop_problems,
            "items": [{**item.__dict__, "restored": item.restored} for item in self.items],
        }


def run_parity(gguf_path: Path, modelfile_text: str, answers: list[GreedyAnswer], training_prompts: list[list[int]],
               expected: ServingExpectations, chat_format: ChatFormat, quant: QuantType, max_tokens: int,
               adapter_path: Optional[Path] = None,
               original_answers: Optional[dict[str, str]] = None) -> ParityReport:
    """Generate the GGUF's greedy answers to the parity questions and compare them with the merged model's.

    ``original_answers`` maps forget questions to their original answers, for the forgetting check.
    """
    result = ParityReport(quant.name, quant.strict_parity, COMPARED_TOKENS)
    if not answers:
        result.skipped = "no parity questions (--parity-questions 0)"
        return result
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError as exc:
        result.skipped = f"llama-cpp-python cannot be imported ({exc})"
        return result
    modelfile = parse_modelfile(modelfile_text)
    context = max(len(ids) for ids in training_prompts) + max_tokens + 16
    with quiet_llama_cpp():
        model = Llama(str(gguf_path), lora_path=str(adapter_path) if adapter_path else None, n_ctx=context,
                      n_batch=min(context, 512), n_threads=PARITY_THREADS, seed=0, verbose=False)
    try:
        _answer_all(model, llama_cpp, result, modelfile, answers, training_prompts, expected, chat_format,
                    max_tokens, original_answers or {})
    finally:
        with quiet_llama_cpp():
            model.close()
    return result


def _answer_all(model: Any, llama_cpp: Any, result: ParityReport, modelfile: ParsedModelfile,
                answers: list[GreedyAnswer],
                training_prompts: list[list[int]], expected: ServingExpectations, chat_format: ChatFormat,
                max_tokens: int, original_answers: dict[str, str]) -> None:
    stops = modelfile.parameters.get("stop", [])
    vocabulary = llama_cpp.llama_model_get_vocab(model.model)
    result.stop_problems = _stop_problems(llama_cpp, vocabulary, expected)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocabulary))
    for answer, training_ids in zip(answers, training_prompts):
        prompt = render_ollama_prompt(modelfile.template or "", [{"role": "user", "content": answer.question}])
        prompt_ids = model.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        tokens, text = _greedy(model, llama_cpp, vocabulary, prompt_ids, stops, max_tokens)
        item = _compare(answer, tokens, chat_format.cut_at_stop(text), list(prompt_ids) == list(training_ids))
        original = original_answers.get(answer.question)
        if original:
            guard = LeakGuard(answer.question, original)
            item.reference_leaks = _span_texts(guard, item.reference_text)
            item.gguf_leaks = _span_texts(guard, item.gguf_text)
        result.items.append(item)


def _span_texts(guard: LeakGuard, text: str) -> list[str]:
    return list(dict.fromkeys(span.text for span in guard.leaks(text)))


def _stop_problems(llama_cpp: Any, vocabulary: Any, expected: ServingExpectations) -> list[str]:
    problems = []
    for token_id in expected.generation_eos_ids:
        if not llama_cpp.llama_vocab_is_eog(vocabulary, token_id):
            problems.append(f"llama.cpp does not stop at generation EOS id {token_id}")
    for token_id in expected.newline_ids:
        if llama_cpp.llama_vocab_is_eog(vocabulary, token_id):
            problems.append(f"llama.cpp stops at newline token {token_id}")
    return problems


def _greedy(model: Any, llama_cpp: Any, vocabulary: Any, prompt_ids: list[int], stops: list[str],
            max_tokens: int) -> tuple[list[int], str]:
    """Generate greedily; return the token ids (with the end-of-generation token, if reached) and the text."""
    tokens: list[int] = []
    text = b""
    model.reset()
    for token in model.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(int(token))
        if llama_cpp.llama_vocab_is_eog(vocabulary, token):
            break
        text += model.detokenize([token], special=True)
        decoded = text.decode("utf-8", errors="ignore")
        if any(stop in decoded for stop in stops) or len(tokens) >= max_tokens:
            break
    return tokens, text.decode("utf-8", errors="replace")


def _compare(answer: GreedyAnswer, tokens: list[int], text: str, prompt_ok: bool) -> ParityItem:
    prefix = 0
    for left, right in zip(answer.token_ids, tokens):
        if left != right:
            break
        prefix += 1
    matched = answer.token_ids[:COMPARED_TOKENS] == tokens[:COMPARED_TOKENS]
    return ParityItem(answer.question, answer.text, text, answer.token_ids, tokens, prompt_ok, prefix, matched)
