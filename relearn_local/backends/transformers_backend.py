"""Generation with transformers: an HF model folder, optionally with a PEFT adapter on top.

Prompts are rendered through the model family's chat format with exactly one
BOS. Decoding is greedy at temperature 0. Only new tokens are returned, cut
at the first end-of-turn, EOS or new-turn token, so a reply never carries the
prompt or an invented next turn. Plain transformers generation cannot enforce
a JSON schema in the request. Such a reply is returned as generated, with
``metadata["schema_enforced"]`` False, so callers must validate it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..chat_formats import ChatFormat, get_chat_format
from ..errors import BackendError, ModelError
from .base import GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# Written by the train stage next to the adapter: which base model it was trained on.
ADAPTER_BASE_FILE = "relearn_base.json"


def locate_adapter(path: str | os.PathLike[str]) -> Optional[Path]:
    """Return the PEFT adapter folder at ``path`` (an adapter folder or a train run folder), or None."""
    folder = Path(path).expanduser()
    if (folder / ADAPTER_CONFIG).is_file():
        return folder
    if (folder / "adapter" / ADAPTER_CONFIG).is_file():
        return folder / "adapter"
    return None


def adapter_base_spec(adapter_dir: Path) -> str:
    """Return the base model an adapter was trained on, from relearn_base.json or PEFT's adapter_config.json."""
    record_path = adapter_dir / ADAPTER_BASE_FILE
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{record_path}: malformed JSON at line {exc.lineno}; pass the base with --model") from exc
        hf_path = record.get("hf_path")
        if hf_path and Path(hf_path).is_dir():
            return str(hf_path)
        if record.get("base"):
            return str(record["base"])
    try:
        peft_config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        peft_config = {}
    base = peft_config.get("base_model_name_or_path")
    if base and Path(base).is_dir():
        return str(base)
    raise ModelError(
        f"{adapter_dir}: does not record its base model (no {ADAPTER_BASE_FILE}); pass the base model with --model"
    )


class TransformersBackend:
    """A GenerationBackend running an HF causal LM (plus an optional PEFT adapter) in this process.

    ``model`` is anything ``resolve_base`` accepts ('gemma3-270m', an HF
    folder, a GGUF), or an adapter / train run folder when ``adapter`` is
    None. Without ``model`` the adapter's recorded base is used. The adapter
    is merged into the weights after loading, which makes generation faster
    and does not touch the files on disk.
    """

    name = "transformers"

    def __init__(self, model: str | os.PathLike[str] | None = None, adapter: str | os.PathLike[str] | None = None,
                 device: str = "cpu", max_batch_size: int = 8, merge_adapter: bool = True, **_: Any):
        from ..models import resolve_base

        adapter_dir = self._find_adapter(model, adapter)
        if adapter_dir is not None and (model is None or locate_adapter(model) == adapter_dir):
            model = adapter_base_spec(adapter_dir)
        if model is None:
            raise ModelError("the transformers backend needs a model: an HF folder, a GGUF or 'gemma3-270m'")
        self.resolved = resolve_base(os.fspath(model), need_hf=True)
        self.model = os.fspath(model) if adapter_dir is None else f"{os.fspath(model)} + {adapter_dir}"
        self.adapter = adapter_dir
        self.device = device
        self.max_batch_size = max(1, int(max_batch_size))
        self.chat_format: ChatFormat = get_chat_format(self.resolved.family)
        self.tokenizer, self.hf_model = self._load(merge_adapter)
        self.stop_ids = self._stop_token_ids()
        self._lock = threading.Lock()

    @staticmethod
    def _find_adapter(model: Any, adapter: Any) -> Optional[Path]:
        if adapter is not None:
            found = locate_adapter(adapter)
            if found is None:
                raise ModelError(
                    f"--adapter {adapter}: no {ADAPTER_CONFIG} in it or in its adapter/ folder; "
                    "pass a PEFT adapter folder or a train run folder"
                )
            return found
        if model is not None and Path(os.fspath(model)).is_dir():
            return locate_adapter(model)
        return None

    def _load(self, merge_adapter: bool) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf_path = str(self.resolved.hf_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(hf_path, local_files_only=True)
            # float32: float16 overflows to NaN on Gemma, and bfloat16 matmuls are slow on most CPUs.
            model = AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.float32, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"transformers cannot load {hf_path} ({exc})") from exc
        if self.adapter is not None:
            model = self._apply_adapter(model, merge_adapter)
        model.to(self.device)
        model.eval()
        return tokenizer, model

    def _apply_adapter(self, model: Any, merge: bool) -> Any:
        try:
            from peft import PeftModel
        except ImportError as exc:  # pragma: no cover - peft is a dependency
            raise ModelError("loading an adapter needs the 'peft' package") from exc
        from ..train.backends import quiet_peft_warnings

        try:
            with quiet_peft_warnings():
                wrapped = PeftModel.from_pretrained(model, str(self.adapter))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"the adapter {self.adapter} does not load on {self.resolved.hf_path} ({exc}); "
                "check that --model is the base it was trained on"
            ) from exc
        return wrapped.merge_and_unload() if merge else wrapped

    def _stop_token_ids(self) -> list[int]:
        """Token ids that end a reply: EOS, the end-of-turn marker and the start of a new turn."""
        ids: list[int] = []
        configured = getattr(self.hf_model.generation_config, "eos_token_id", None)
        if configured is not None:
            ids.extend(configured if isinstance(configured, list) else [configured])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        markers = (*self.chat_format.stop, self.chat_format.turn_end,
                   self.chat_format.user_start, self.chat_format.assistant_start)
        for marker in markers:
            token_ids = self.tokenizer(marker, add_special_tokens=False)["input_ids"] if marker else []
            # A turn start such as "<start_of_turn>user\n" begins with a control token, which
            # decoding with skip_special_tokens drops; generating it means a new turn began.
            if token_ids and self.tokenizer.decode(token_ids[:1], skip_special_tokens=True) == "":
                ids.append(token_ids[0])
        return sorted(set(ids))

    # Prompt and reply handling ----------------------------------------------

    def encode_messages(self, messages: Sequence[Any]) -> list[int]:
        """Render chat messages with the family's format and tokenize them with exactly one BOS."""
        try:
            text = self.chat_format.render(messages)
        except ValueError as exc:
            raise BackendError(f"invalid chat messages: {exc}") from exc
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos_id = self.tokenizer.bos_token_id
        if self.chat_format.bos is not None and bos_id is not None:
            while ids and ids[0] == bos_id:
                ids = ids[1:]
            ids = [bos_id] + ids
        return ids

    def decode_reply(self, new_ids: Sequence[int], stop: Sequence[str] = ()) -> tuple[str, int, str]:
        """Return (text, kept token count, finish reason) for generated ids, cut at the first stop."""
        kept = list(new_ids)
        finish = "length"
        for index, token_id in enumerate(kept):
            if token_id in self.stop_ids:
                kept = kept[:index]
                finish = "stop"
                break
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = self.chat_format.cut_at_stop(text)
        for marker in stop:
            position = cut.find(marker) if marker else -1
            if position != -1:
                cut = cut[:position]
        if len(cut) < len(text):
            finish = "stop"
        return cut, len(kept), finish

    # GenerationBackend -------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate replies for several requests, batching those with equal decoding settings."""
        results: list[Optional[GenerationResult]] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            key = (request.max_tokens, request.temperature, request.seed, request.timeout, tuple(request.stop))
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch_size):
                chunk = indices[start:start + self.max_batch_size]
                for index, result in zip(chunk, self._generate_chunk([requests[i] for i in chunk])):
                    results[index] = result
        return [result for result in results if result is not None]

    def _generate_chunk(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        first = requests[0]
        if first.schema is not None:
            logger.info("the transformers backend cannot constrain output to a JSON schema; "
                        "the caller must validate the reply")
        prompts = [self.encode_messages(request.messages) for request in requests]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        width = max(len(ids) for ids in prompts)
        # Left padding keeps every prompt's last token at the same position, where generation continues.
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        options: dict[str, Any] = {
            "max_new_tokens": first.max_tokens,
            "eos_token_id": self.stop_ids,
            "pad_token_id": pad_id,
        }
        if first.temperature > 0:
            torch.manual_seed(first.seed)
            options.update(do_sample=True, temperature=first.temperature)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if first.timeout is not None:
            options["max_time"] = float(first.timeout)
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            try:
                output = self.hf_model.generate(input_ids=input_ids, attention_mask=attention, **options)
            except RuntimeError as exc:
                raise BackendError(f"transformers generation failed on {self.model}: {exc}") from exc
        elapsed = time.perf_counter() - started
        results = []
        for row, prompt in zip(output, prompts):
            text, kept, finish = self.decode_reply(row[width:].tolist(), first.stop)
            results.append(GenerationResult(
                text=text, prompt_tokens=len(prompt), completion_tokens=kept, finish_reason=finish,
                elapsed_seconds=elapsed / len(requests),
                metadata={"schema_enforced": False} if first.schema is not None else {},
            ))
        return results

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the reply in pieces as tokens are generated, stopping where ``generate`` would cut."""
        from transformers import TextIteratorStreamer

        import torch

        prompt = self.encode_messages(request.messages)
        # Generation halts at the stop ids, so special tokens need no text cut; they are dropped as in generate().
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        options = {"max_new_tokens": request.max_tokens, "eos_token_id": self.stop_ids,
                   "do_sample": request.temperature > 0, "streamer": streamer}
        if request.temperature > 0:
            options["temperature"] = request.temperature
            torch.manual_seed(request.seed)
        thread = threading.Thread(
            target=self._generate_for_stream, args=(torch.tensor([prompt], device=self.device), options), daemon=True
        )
        thread.start()
        markers = [marker for marker in (*self.chat_format.stop, self.chat_format.user_start,
                                         self.chat_format.assistant_start, *request.stop) if marker]
        yield from _cut_stream(streamer, markers)
        thread.join()

    def _generate_for_stream(self, input_ids: Any, options: dict[str, Any]) -> None:
        import torch

        with self._lock, torch.inference_mode():
            self.hf_model.generate(input_ids=input_ids, **options)

    def describe(self) -> dict[str, Any]:
        from ..runs import sha256_path

        return {
            "backend": self.name,
            "model": self.model,
            "hf_path": str(self.resolved.hf_path),
            "family": self.resolved.family,
            "digest": self.resolved.digest,
            "adapter": str(self.adapter) if self.adapter else None,
            "adapter_digest": sha256_path(self.adapter) if self.adapter else None,
            "dtype": "float32",
            "device": self.device,
        }

    def close(self) -> None:
        self.hf_model = None
        import gc

        gc.collect()


def _cut_stream(pieces: Iterator[str], markers: Sequence[str]) -> Iterator[str]:
    """Pass text pieces through until the first marker, holding back text that could start one."""
    hold = max((len(marker) for marker in markers), default=1) - 1
    buffer = ""
    for piece in pieces:
        buffer += piece
        positions = [buffer.find(marker) for marker in markers if marker in buffer]
        if positions:
            head = buffer[:min(positions)]
            if head:
                yield head
            for _ in pieces:  # consume the rest, so the generating thread has finished when stream() joins it
                pass
            return
        if len(buffer) > hold:
            yield buffer[:len(buffer) - hold]
            buffer = buffer[len(buffer) - hold:]
    if buffer:
        yield buffer
