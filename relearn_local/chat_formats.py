"""Chat formats per model family: the single source for training examples, prompts and templates.

Training examples, prompts sent to llama.cpp, the GGUF ``tokenizer.chat_template``
and the Ollama Modelfile TEMPLATE are all built from the table below, so the
text a model was trained on is the text it is served with.

Rules every format follows:

- Exactly one BOS. Rendered text never contains the BOS string; tokenizers
  are called without special tokens and the BOS id is prepended once.
- Gemma has no system role: system text is folded into the first user turn,
  followed by a blank line. Llama 3, Qwen2 and ChatML keep a real system turn.
- Nothing date-dependent is rendered (the Llama 3.1 template writes today's
  date into the system header; this table does not), so the same example
  gives the same tokens on any day.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .errors import ModelError

Message = Mapping[str, str]


@dataclass(frozen=True)
class ChatFormat:
    """How one model family marks turns."""

    family: str
    bos: str | None
    has_system_role: bool
    system_start: str
    user_start: str
    assistant_start: str
    turn_end: str
    turn_gap: str
    stop: tuple[str, ...]
    description: str

    def fold_system(self, messages: Sequence[Message]) -> list[dict[str, str]]:
        """Return the messages with roles checked and, for families without a system role, system text folded in."""
        turns: list[dict[str, str]] = []
        system_parts: list[str] = []
        for message in messages:
            role = message.get("role")
            content = message.get("content", "")
            if role not in {"system", "user", "assistant"}:
                raise ValueError(f"unknown chat role {role!r}; expected system, user or assistant")
            if role == "system":
                if turns:
                    raise ValueError("a system message must come before the first user turn")
                system_parts.append(content)
                continue
            turns.append({"role": role, "content": content})
        system_text = "\n\n".join(part for part in system_parts if part)
        if system_text and not self.has_system_role:
            if not turns or turns[0]["role"] != "user":
                turns.insert(0, {"role": "user", "content": system_text})
            else:
                turns[0] = {"role": "user", "content": f"{system_text}\n\n{turns[0]['content']}"}
        elif system_text:
            turns.insert(0, {"role": "system", "content": system_text})
        return turns

    def _start_of(self, role: str) -> str:
        return {"system": self.system_start, "user": self.user_start, "assistant": self.assistant_start}[role]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render a conversation as text, without BOS.

        With ``add_generation_prompt`` the text ends where the assistant's
        reply begins.
        """
        text = []
        for turn in self.fold_system(messages):
            text.append(self._start_of(turn["role"]) + turn["content"] + self.turn_end + self.turn_gap)
        if add_generation_prompt:
            text.append(self.assistant_start)
        return "".join(text)

    def prompt(self, question: str, system: str | None = None) -> str:
        """Render a single-question prompt that ends where the answer begins, without BOS."""
        messages: list[Message] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": question})
        return self.render(messages)

    def completion(self, answer: str) -> str:
        """Return the supervised text of an answer: the answer and the end-of-turn marker."""
        return answer + self.turn_end

    def with_bos(self, text: str) -> str:
        """Prefix rendered text with the BOS string, for servers that tokenize text with special tokens parsed."""
        return (self.bos or "") + text

    def cut_at_stop(self, text: str) -> str:
        """Cut generated text at the first stop string or start of a new turn."""
        cut = len(text)
        for marker in (*self.stop, self.user_start, self.assistant_start):
            if marker:
                position = text.find(marker)
                if position != -1:
                    cut = min(cut, position)
        return text[:cut]

    def jinja_template(self) -> str:
        """Return a Jinja chat template (for GGUF ``tokenizer.chat_template``) that renders like ``render``."""
        fold = (
            "{%- set ns = namespace(system='') -%}"
            "{%- for m in messages if m['role'] == 'system' -%}"
            "{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + m['content'] -%}"
            "{%- endfor -%}"
        )
        starts = (
            f"{{%- set starts = {{'system': {self.system_start!r}, 'user': {self.user_start!r}, "
            f"'assistant': {self.assistant_start!r}}} -%}}"
        )
        bos = "{{- bos_token -}}" if self.bos else ""
        if self.has_system_role:
            body = (
                "{%- if ns.system -%}{{- starts['system'] + ns.system + end -}}{%- endif -%}"
                "{%- for m in messages if m['role'] != 'system' -%}"
                "{{- starts[m['role']] + m['content'] + end -}}"
                "{%- endfor -%}"
            )
        else:
            body = (
                "{%- set ns2 = namespace(first=true) -%}"
                "{%- for m in messages if m['role'] != 'system' -%}"
                "{%- if ns2.first and ns.system and m['role'] == 'user' -%}"
                "{{- starts['user'] + ns.system + '\\n\\n' + m['content'] + end -}}"
                "{%- elif ns2.first and ns.system -%}"
                "{{- starts['user'] + ns.system + end + starts[m['role']] + m['content'] + end -}}"
                "{%- else -%}{{- starts[m['role']] + m['content'] + end -}}{%- endif -%}"
                "{%- set ns2.first = false -%}"
                "{%- endfor -%}"
                "{%- if ns2.first and ns.system -%}{{- starts['user'] + ns.system + end -}}{%- endif -%}"
            )
        end = f"{{%- set end = {(self.turn_end + self.turn_gap)!r} -%}}"
        generation = "{%- if add_generation_prompt -%}{{- starts['assistant'] -}}{%- endif -%}"
        return fold + starts + end + bos + body + generation


CHAT_FORMATS: dict[str, ChatFormat] = {
    "gemma": ChatFormat(
        family="gemma",
        bos="<bos>",
        has_system_role=False,
        system_start="",
        user_start="<start_of_turn>user\n",
        assistant_start="<start_of_turn>model\n",
        turn_end="<end_of_turn>",
        turn_gap="\n",
        stop=("<end_of_turn>",),
        description="Gemma 2 and 3: <start_of_turn>user/model, no system role",
    ),
    "llama3": ChatFormat(
        family="llama3",
        bos="<|begin_of_text|>",
        has_system_role=True,
        system_start="<|start_header_id|>system<|end_header_id|>\n\n",
        user_start="<|start_header_id|>user<|end_header_id|>\n\n",
        assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
        turn_end="<|eot_id|>",
        turn_gap="",
        stop=("<|eot_id|>", "<|end_of_text|>"),
        description="Llama 3.x header format, without the date line",
    ),
    "qwen2": ChatFormat(
        family="qwen2",
        bos=None,
        has_system_role=True,
        system_start="<|im_start|>system\n",
        user_start="<|im_start|>user\n",
        assistant_start="<|im_start|>assistant\n",
        turn_end="<|im_end|>",
        turn_gap="\n",
        stop=("<|im_end|>", "<|endoftext|>"),
        description="Qwen2 and Qwen2.5 (ChatML markers, no BOS)",
    ),
    "chatml": ChatFormat(
        family="chatml",
        bos=None,
        has_system_role=True,
        system_start="<|im_start|>system\n",
        user_start="<|im_start|>user\n",
        assistant_start="<|im_start|>assistant\n",
        turn_end="<|im_end|>",
        turn_gap="\n",
        stop=("<|im_end|>",),
        description="ChatML fallback for other families",
    ),
}

# model_type values (HF config) and general.architecture values (GGUF) per family.
_FAMILY_BY_ARCHITECTURE = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "gemma3n": "gemma",
    "llama": "llama3",
    "qwen2": "qwen2",
    "qwen3": "qwen2",
    "qwen2_moe": "qwen2",
}


def get_chat_format(family: str) -> ChatFormat:
    try:
        return CHAT_FORMATS[family]
    except KeyError:
        raise ModelError(
            f"unknown chat format {family!r}; choose one of: {', '.join(CHAT_FORMATS)}"
        ) from None


def family_for(architecture: str | None, vocabulary: Iterable[str] | None = None) -> str:
    """Pick the chat format family from a model_type or GGUF architecture and, for Llama, its vocabulary.

    Llama 2 and other ``llama``-architecture models without Llama 3's header
    tokens fall back to ChatML.
    """
    family = _FAMILY_BY_ARCHITECTURE.get((architecture or "").lower(), "chatml")
    if family == "llama3":
        tokens = set(vocabulary or ())
        if "<|eot_id|>" not in tokens:
            return "chatml"
    return family


@dataclass
class EncodedExample:
    """Token ids of one prompt/answer pair; ``labels`` is -100 on prompt positions."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int


def encode_prompt(tokenizer: Any, chat_format: ChatFormat, question: str, system: str | None = None) -> list[int]:
    """Tokenize a prompt with exactly one BOS (where the family has one)."""
    ids = list(tokenizer(chat_format.prompt(question, system), add_special_tokens=False)["input_ids"])
    return _with_single_bos(tokenizer, chat_format, ids)


def encode_example(
    tokenizer: Any, chat_format: ChatFormat, question: str, answer: str, system: str | None = None
) -> EncodedExample:
    """Tokenize a training example so that labels cover exactly the answer and its end-of-turn marker.

    Prompt and completion are tokenized separately and concatenated: joint
    tokenization can merge characters across the boundary into one token,
    which would put part of the answer under a masked label (or part of the
    prompt under a supervised one). Generation sees the same split, since the
    model produces the answer's tokens after the prompt's.
    """
    prompt_ids = encode_prompt(tokenizer, chat_format, question, system)
    completion_ids = list(tokenizer(chat_format.completion(answer), add_special_tokens=False)["input_ids"])
    return EncodedExample(
        input_ids=prompt_ids + completion_ids,
        labels=[-100] * len(prompt_ids) + completion_ids,
        prompt_length=len(prompt_ids),
    )


def _with_single_bos(tokenizer: Any, chat_format: ChatFormat, ids: list[int]) -> list[int]:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if chat_format.bos is None or bos_id is None:
        return ids
    while ids and ids[0] == bos_id:
        ids = ids[1:]
    return [bos_id] + ids
