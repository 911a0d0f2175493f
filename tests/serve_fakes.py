"""Test support for the serve tests: a scripted backend and a uvicorn server on a loopback port."""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from relearn_local.backends.base import GenerationRequest, GenerationResult

WAIT_SECONDS = 30.0


class FakeBackend:
    """A GenerationBackend that returns "<prefix>: <last user message>" and records every request.

    ``gate`` blocks generation until the test sets it; ``active`` and
    ``max_active`` count generations running at once, to check that the
    server never runs two on one model.
    """

    name = "fake"

    def __init__(self, model: str = "fake-unlearned", prefix: str = "Answer", piece_delay: float = 0.0):
        self.model = model
        self.prefix = prefix
        self.piece_delay = piece_delay
        self.requests: list[GenerationRequest] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: Optional[BaseException] = None
        self.fail_after_pieces: Optional[int] = None
        self.active = 0
        self.max_active = 0
        self.started = threading.Event()
        self.stream_pieces_sent = 0
        self.stream_closed = threading.Event()
        self.closed = False
        self._lock = threading.Lock()

    def answer_for(self, request: GenerationRequest) -> str:
        question = [message["content"] for message in request.messages if message["role"] == "user"][-1]
        return f"{self.prefix}: {question}"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self._enter(request)
        try:
            self.gate.wait(WAIT_SECONDS)
            if self.fail_with is not None:
                raise self.fail_with
            if self.piece_delay:
                time.sleep(self.piece_delay * 5)
            text = self.answer_for(request)
            return GenerationResult(text=text, prompt_tokens=7, completion_tokens=len(text.split()))
        finally:
            self._leave()

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        self._enter(request)
        try:
            self.gate.wait(WAIT_SECONDS)
            words = self.answer_for(request).split(" ")
            for index, word in enumerate(words[: request.max_tokens]):
                if self.fail_after_pieces is not None and index == self.fail_after_pieces:
                    raise self.fail_with or RuntimeError("scripted failure")
                if self.piece_delay:
                    time.sleep(self.piece_delay)
                self.stream_pieces_sent += 1
                yield word if index == 0 else " " + word
        finally:
            self.stream_closed.set()
            self._leave()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}

    def close(self) -> None:
        self.closed = True

    def _enter(self, request: GenerationRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yield its base URL, then stop it."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="serve-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_SECONDS)


def wait_until(condition, what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def parse_sse(text: str) -> list[Any]:
    """Return the data of each server-sent event: parsed JSON, or the string "[DONE]"."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), f"not an SSE data line: {block!r}"
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


@contextmanager
def captured_logs(name: str = "relearn_local") -> Iterator[list[logging.LogRecord]]:
    """Collect records of logger ``name`` directly, so a CLI test that stopped propagation cannot hide them."""
    records: list[logging.LogRecord] = []

    class Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collector(level=logging.DEBUG)
    target = logging.getLogger(name)
    previous_level = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        target.removeHandler(handler)
        target.setLevel(previous_level)
