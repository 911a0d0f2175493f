"""Request and response bodies of the serve API.

``/unlearn/`` rejects unknown fields so that a misspelt field name comes back
as a 422 naming it. The chat completion request follows the OpenAI shape and
ignores fields it does not use, as OpenAI clients send many optional ones.
"""

from __future__ import annotations

import json
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class QuestionRequest(BaseModel):
    """Body of POST /unlearn/, /original/ and /compare/."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The question to answer.")
    max_tokens: Optional[int] = Field(
        default=None, ge=1, description="Maximum output tokens; capped at the server's limit."
    )


class AnswerResponse(BaseModel):
    """Body returned by POST /unlearn/ and /original/."""

    response: str


class ModelAnswer(BaseModel):
    model: str
    response: str


class CompareResponse(BaseModel):
    """Body returned by POST /compare/: the served model's answer and the original model's."""

    question: str
    unlearned: ModelAnswer
    original: ModelAnswer


class ContentPart(BaseModel):
    """One part of a message's content in the list form; only text parts are supported."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: Union[str, list[ContentPart], None] = None


class ChatCompletionRequest(BaseModel):
    """Body of POST /v1/chat/completions (the OpenAI shape; unused fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported.")


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None


class ChatCompletionChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]

    def sse(self) -> str:
        """Render the chunk as one server-sent event.

        As in OpenAI's stream, a delta lists only the fields it sets, while
        ``finish_reason`` is always present (null until the last chunk).
        """
        payload = self.model_dump()
        for choice in payload["choices"]:
            choice["delta"] = {key: value for key, value in choice["delta"].items() if value is not None}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "relearn-local"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

