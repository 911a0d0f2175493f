"""POST /v1/chat/completions and GET /v1/models in the OpenAI shape, so OpenAI clients can use the server.

Streaming replies are server-sent events: ``data: {chat.completion.chunk}``
lines, then ``data: [DONE]``.
"""

from __future__ import annotations

import logging
import time
import uuid
import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional, Union

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from ..backends.base import GenerationRequest
from .app import ServeHTTPError, check_question_length, failure_reply, generate_with, output_token_limit
from .limits import ServeLimitError
from .schemas import (ChatCompletionChoice, ChatCompletionChunk, ChatCompletionChunkChoice, ChatCompletionMessage,
                      ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ChunkDelta, ModelCard, ModelList,
                      Usage)

if TYPE_CHECKING:
    from .app import ServedModel, ServeState
    from .limits import TextStream

logger = logging.getLogger(__name__)

# OpenAI's "developer" role is its newer name for the system role.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def add_openai_routes(app: FastAPI, state: "ServeState") -> None:
    @app.post("/v1/chat/completions", response_model=None,
              summary="OpenAI-compatible chat completion (set stream for SSE)")
    async def chat_completions(body: ChatCompletionRequest) -> Union[ChatCompletionResponse, StreamingResponse]:
        served = _model_for(body.model, state)
        request = _generation_request(body, state)
        if body.stream:
            return await _stream_reply(served, request, state)
        result = await generate_with(served, request, state)
        return ChatCompletionResponse(
            id=_completion_id(),
            created=int(time.time()),
            model=served.label,
            choices=[ChatCompletionChoice(message=ChatCompletionMessage(content=result.text),
                                          finish_reason=result.finish_reason or "stop")],
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                        total_tokens=result.prompt_tokens + result.completion_tokens),
        )

    @app.get("/v1/models", response_model=ModelList, summary="The models this server answers with")
    async def list_models() -> ModelList:
        created = int(state.started)
        cards = [ModelCard(id=state.unlearned.label, created=created)]
        if state.original is not None:
            cards.append(ModelCard(id=state.original.label, created=created))
        return ModelList(data=cards)


def _model_for(requested: str | None, state: "ServeState") -> "ServedModel":
    """Pick the --compare model when a request names it; any other name gets the served model.

    OpenAI clients always send some model name, often a placeholder, so an
    unknown name is not an error.
    """
    if requested and state.original is not None and requested == state.original.label:
        return state.original
    return state.unlearned


def _generation_request(body: ChatCompletionRequest, state: "ServeState") -> GenerationRequest:
    config = state.config
    messages = [_plain_message(message, index) for index, message in enumerate(body.messages)]
    total = "".join(message["content"] for message in messages)
    check_question_length(total, config, param="messages")
    if messages[-1]["role"] == "assistant":
        raise ServeHTTPError(422, "invalid request: the last message must be from the user, not the assistant",
                             "invalid_request_error", "messages")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return GenerationRequest(
        messages=messages,
        max_tokens=output_token_limit(config, body.max_completion_tokens, body.max_tokens),
        temperature=config.temperature if body.temperature is None else body.temperature,
        seed=config.seed if body.seed is None else body.seed,
        stop=stop,
        timeout=config.request_timeout,
    )


def _plain_message(message: ChatMessage, index: int) -> dict[str, str]:
    role = _ROLES.get(message.role)
    if role is None:
        raise ServeHTTPError(
            422,
            f"invalid request: messages.{index}.role {message.role!r} is not supported; "
            "use system, user or assistant",
            "invalid_request_error",
            f"messages.{index}.role",
        )
    if message.content is None:
        return {"role": role, "content": ""}
    if isinstance(message.content, str):
        return {"role": role, "content": message.content}
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise ServeHTTPError(
                422,
                f"invalid request: messages.{index}.content has a {part.type!r} part; only text parts are supported",
                "invalid_request_error",
                f"messages.{index}.content",
            )
        texts.append(part.text)
    return {"role": role, "content": "".join(texts)}


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


class _EventStreamResponse(StreamingResponse):
    """A streaming reply that runs ``on_close`` however it ends: finished, failed or cut by the client.

    A generator's own ``finally`` is not enough, because a client that
    disconnects before the first piece leaves the generator unstarted.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def _stream_reply(served: "ServedModel", request: GenerationRequest, state: "ServeState") -> StreamingResponse:
    """Queue the request, and once its first piece is ready return the streaming reply.

    Waiting for the first piece lets a failure at the start (a prompt too
    long for the context) still become an error status instead of an event.
    The place in the queue is released when the stream ends, fails or the
    client disconnects.
    """
    state.requests += 1
    admission = served.worker.admit()
    stream: Optional["TextStream"] = None
    try:
        stream = await served.worker.open_stream(request)
        first: Optional[str] = await stream.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException as exc:
        if stream is not None:
            stream.close()
        admission.release()
        if isinstance(exc, Exception) and not isinstance(exc, (ServeLimitError, ServeHTTPError)):
            raise failure_reply(exc, served) from exc
        raise

    def close() -> None:
        stream.close()
        admission.release()

    return _EventStreamResponse(_sse_events(first, stream, served, request, state), on_close=close)


async def _sse_events(first: Optional[str], pieces: "TextStream", served: "ServedModel", request: GenerationRequest,
                      state: "ServeState") -> AsyncIterator[str]:
    identifier, created = _completion_id(), int(time.time())

    def chunk(delta: ChunkDelta, finish_reason: str | None = None) -> str:
        return ChatCompletionChunk(
            id=identifier, created=created, model=served.label,
            choices=[ChatCompletionChunkChoice(delta=delta, finish_reason=finish_reason)],
        ).sse()

    yield chunk(ChunkDelta(role="assistant", content=""))
    if first is None:
        yield chunk(ChunkDelta(), "stop")
        yield "data: [DONE]\n\n"
        return
    count = 1
    yield chunk(ChunkDelta(content=first))
    try:
        async for piece in pieces:
            count += 1
            yield chunk(ChunkDelta(content=piece))
    except Exception as exc:  # the reply has started, so the error goes to the client as an event
        state.errors += 1
        reply = failure_reply(exc, served)
        yield _error_event(reply.message, reply.error_type)
        return
    # NOTE: the backend stream yields text only, so "length" is inferred from the piece count.
    # A backend that yields several tokens per piece can reach max_tokens and still report "stop".
    yield chunk(ChunkDelta(), "length" if count >= request.max_tokens else "stop")
    yield "data: [DONE]\n\n"


def _error_event(message: str, error_type: str) -> str:
    return f"data: {json.dumps({'error': {'message': message, 'type': error_type}})}\n\n"
