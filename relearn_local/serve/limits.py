"""Request limits: a body size cap applied before the body is read, and one serialized worker per model.

llama.cpp models are not thread-safe, so every generation for one model runs
on that model's single worker thread. Requests beyond ``max_pending`` per
model are rejected at once with 503 instead of piling up behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Iterator, MutableMapping, Optional

from ..backends.base import GenerationBackend, GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ServeLimitError(Exception):
    """A request rejected by a limit, with the HTTP status and a message for the client."""

    status_code = 503
    error_type = "server_busy"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class QueueFullError(ServeLimitError):
    """More requests are admitted for a model than ``max_pending`` allows."""


class QueueTimeoutError(ServeLimitError):
    """A queued request waited longer than ``queue_timeout`` for the model."""


def error_body(message: str, error_type: str, param: Optional[str] = None) -> dict[str, Any]:
    """Build the JSON body of every error reply.

    ``detail`` is what FastAPI clients read, and ``error`` is the object that
    OpenAI clients read.
    """
    return {"detail": message, "error": {"message": message, "type": error_type, "param": param, "code": None}}


class BodySizeLimitMiddleware:
    """Reject request bodies over ``max_bytes`` with 413, before the application parses them.

    A declared Content-Length over the limit is rejected without reading the
    body. Uvicorn discards the unread rest and keeps the connection usable.
    A body without Content-Length (chunked) is counted while it arrives and
    rejected once it passes the limit. The accepted body is handed to the
    application unchanged.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _send_json(send, 400, error_body("the Content-Length header is not a valid number", "invalid_request_error"))
            return
        if declared is not None and declared > self.max_bytes:
            self._reject_log(scope, declared)
            await _send_json(send, 413, self._too_large(declared))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > self.max_bytes:
                self._reject_log(scope, len(body))
                await _send_json(send, 413, self._too_large(None))
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    def _too_large(self, size: Optional[int]) -> dict[str, Any]:
        size_text = f"{size} bytes" if size is not None else f"over {self.max_bytes} bytes"
        return error_body(
            f"request body is {size_text}; the limit is {self.max_bytes} bytes (--max-body-bytes). "
            "Send a shorter question.",
            "request_too_large",
        )

    def _reject_log(self, scope: Scope, size: int) -> None:
        client = scope.get("client") or ("?", 0)
        logger.warning(
            "rejected %s %s from %s: body of %d bytes is over the limit of %d",
            scope.get("method"), scope.get("path"), client[0], size, self.max_bytes,
        )


def _content_length(scope: Scope) -> Optional[int]:
    """Return the declared body size, None when absent, or -1 when the header is not a number."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay_receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    payload = json.dumps(content).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
    })
    await send({"type": "http.response.body", "body": payload})


class ModelWorker:
    """Run one model's generations one at a time on a dedicated thread, with bounded admission.

    Admission (``admit``) and release happen on the event loop, so the
    pending counter needs no lock. A queued request that waits longer than
    ``queue_timeout`` is withdrawn before it starts.
    """

    def __init__(self, backend: GenerationBackend, label: str, max_pending: int, queue_timeout: float):
        self.backend = backend
        self.label = label
        self.max_pending = max_pending
        self.queue_timeout = queue_timeout
        self.pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"relearn-serve-{label}")

    def admit(self) -> "Admission":
        """Reserve a place for one request; raise QueueFullError when every place is taken."""
        if self.pending >= self.max_pending:
            raise QueueFullError(
                f"the server is busy: {self.pending} requests are already running or queued for the "
                f"{self.label} model (limit {self.max_pending}, --max-pending); retry shortly"
            )
        self.pending += 1
        return Admission(self)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate on the worker thread once the request's turn comes."""
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def job() -> GenerationResult:
            loop.call_soon_threadsafe(started.set)
            return self.backend.generate(request)

        future = self._executor.submit(job)
        await self._wait_for_turn(future, started)
        return await asyncio.wrap_future(future)

    async def open_stream(self, request: GenerationRequest) -> "TextStream":
        """Start streaming once the request's turn comes, and return the text pieces as a TextStream.

        Waiting for the turn happens here, before any reply is sent, so a
        queue timeout can still become a 503.
        """
        started = asyncio.Event()
        stream = TextStream()
        loop = asyncio.get_running_loop()

        def job() -> None:
            loop.call_soon_threadsafe(started.set)
            _pump(self.backend.stream(request), stream.stop_event, stream.put_from_thread(loop))

        future = self._executor.submit(job)
        await self._wait_for_turn(future, started)
        return stream

    async def _wait_for_turn(self, future: Future, started: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(started.wait(), self.queue_timeout)
        except asyncio.TimeoutError:
            if future.cancel():
                raise QueueTimeoutError(
                    f"the request waited {self.queue_timeout:g} s for the {self.label} model without starting "
                    "(--queue-timeout); the server is overloaded, retry later"
                ) from None
            # The job started just as the wait ended; let it run.

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class Admission:
    """A place taken in a ModelWorker until ``release``, which the caller runs when the reply is complete.

    Only the first ``release`` gives the place back, so cleanup paths may call it again safely.
    """

    def __init__(self, worker: ModelWorker):
        self._worker: Optional[ModelWorker] = worker

    def release(self) -> None:
        if self._worker is not None:
            self._worker.pending -= 1
            self._worker = None

    def __enter__(self) -> "Admission":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def _pump(stream: Iterator[str], stop: threading.Event, put: Callable[[tuple[str, Any]], None]) -> None:
    """Move pieces from a backend stream to the event loop until it ends, fails or ``stop`` is set."""
    try:
        for piece in stream:
            if stop.is_set():
                break
            put(("piece", piece))
    except Exception as exc:  # reported to the client as an error event, then logged by the caller
        put(("error", exc))
        return
    finally:
        # Close the generator here, on the worker thread, so the backend releases the model before the next job.
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    put(("end", None))


class TextStream:
    """Text pieces produced on a worker thread, read on the event loop with ``async for``.

    ``close`` (for a client that disconnects) makes the worker stop after
    the current piece, which frees the model for the next request.
    """

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self._items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put_from_thread(self, loop: asyncio.AbstractEventLoop) -> Callable[[tuple[str, Any]], None]:
        return lambda item: loop.call_soon_threadsafe(self._items.put_nowait, item)

    def __aiter__(self) -> "TextStream":
        return self

    async def __anext__(self) -> str:
        kind, value = await self._items.get()
        if kind == "piece":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopAsyncIteration

    def close(self) -> None:
        self.stop_event.set()
