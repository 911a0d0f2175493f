"""The serve API over a real loopback port, with a scripted backend: answers, OpenAI shape, limits, errors."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from relearn_local.backends.base import BackendTimeoutError, BackendUnavailableError, ContextOverflowError
from relearn_local.errors import BackendError
from relearn_local.serve import ServeConfig, create_app
from serve_fakes import FakeBackend, captured_logs, parse_sse, running_server, wait_until

pytestmark = pytest.mark.timeout(120)


def make_config(**overrides) -> ServeConfig:
    values = {"model": "unlearned.gguf"}
    values.update(overrides)
    config = ServeConfig(**values)
    config.validate()
    return config


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def server(backend):
    app = create_app(make_config(max_question_chars=200, max_tokens=64), backend=backend)
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


def test_unlearn_returns_response(server, backend):
    reply = server.post("/unlearn/", json={"question": "Where does Mara live?"})
    assert reply.status_code == 200
    assert reply.json() == {"response": "Answer: Where does Mara live?"}
    request = backend.requests[-1]
    assert list(request.messages) == [{"role": "user", "content": "Where does Mara live?"}]
    assert request.max_tokens == 64
    assert request.temperature == 0.0


def test_unlearn_max_tokens_capped(server, backend):
    server.post("/unlearn/", json={"question": "Q?", "max_tokens": 10000})
    assert backend.requests[-1].max_tokens == 64
    server.post("/unlearn/", json={"question": "Q?", "max_tokens": 5})
    assert backend.requests[-1].max_tokens == 5


def test_unlearn_system_prompt():
    backend = FakeBackend()
    app = create_app(make_config(system_prompt="Be brief."), backend=backend)
    with running_server(app) as url:
        reply = httpx.post(f"{url}/unlearn/", json={"question": "Who is Tomasz?"})
    assert reply.status_code == 200
    assert list(backend.requests[-1].messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who is Tomasz?"},
    ]


def test_health_reports_model_and_limits(server):
    reply = server.get("/health")
    assert reply.status_code == 200
    health = reply.json()
    assert health["status"] == "ok"
    assert health["model"] == "unlearned.gguf"
    assert health["backend"] == {"backend": "fake", "model": "fake-unlearned"}
    assert health["compare"] is None
    assert health["limits"]["max_question_chars"] == 200
    assert health["limits"]["max_tokens"] == 64
    assert health["pending"] == {"unlearned": 0, "original": 0}


def test_page_served(server):
    reply = server.get("/")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    for element_id in ("question", "ask", "answer-unlearned", "answer-original"):
        assert f'id="{element_id}"' in reply.text


def test_chat_completion(server, backend):
    body = {
        "model": "anything",
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Who is "}, {"type": "text", "text": "Mara?"}]},
        ],
        "max_tokens": 9999,
        "temperature": 0.5,
        "top_p": 0.9,
    }
    reply = server.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200
    completion = reply.json()
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("chatcmpl-")
    assert completion["model"] == "unlearned.gguf"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Answer: Who is Mara?"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    request = backend.requests[-1]
    assert list(request.messages) == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Who is Mara?"},
    ]
    assert request.max_tokens == 64
    assert request.temperature == 0.5


def test_chat_completion_stop_passed(server, backend):
    server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "stop": "\n"})
    assert tuple(backend.requests[-1].stop) == ("\n",)


def test_chat_completion_streaming(server):
    body = {"model": "x", "messages": [{"role": "user", "content": "Where does Mara live?"}], "stream": True}
    with server.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(reply.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text == "Answer: Where does Mara live?"
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])


def test_chat_streaming_finish_length(server):
    body = {"messages": [{"role": "user", "content": "one two three four five six"}], "stream": True, "max_tokens": 3}
    with server.stream("POST", "/v1/chat/completions", json=body) as reply:
        events = parse_sse(reply.read().decode())
    text = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1])
    assert text == "Answer: one two"
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_models_listed(server):
    reply = server.get("/v1/models")
    assert reply.status_code == 200
    assert [card["id"] for card in reply.json()["data"]] == ["unlearned.gguf"]


@pytest.mark.parametrize(
    ("body", "expected", "param"),
    [
        ({}, "field 'question' is required", "question"),
        ({"question": 5}, "field 'question'", "question"),
        ({"question": None}, "field 'question'", "question"),
        ({"questoin": "Who?"}, "field 'questoin' is not allowed", "question"),
        ({"question": "Who?", "max_tokens": 0}, "field 'max_tokens'", "max_tokens"),
        ({"question": "   "}, "field 'question' is empty", "question"),
    ],
    ids=["missing", "number", "null", "misspelt", "zero-max-tokens", "blank"],
)
def test_unlearn_invalid_body(server, backend, body, expected, param):
    reply = server.post("/unlearn/", json=body)
    assert reply.status_code == 422
    assert expected in reply.json()["detail"]
    assert reply.json()["error"]["param"] == param
    assert backend.requests == []


def test_unlearn_malformed_json(server, backend):
    reply = server.post("/unlearn/", content=b'{"question": "Who', headers={"Content-Type": "application/json"})
    assert reply.status_code == 422
    assert "not valid JSON" in reply.json()["detail"]
    assert backend.requests == []


def test_question_over_limit(server, backend):
    reply = server.post("/unlearn/", json={"question": "x" * 201})
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert "201 characters" in detail
    assert "limit is 200" in detail
    assert backend.requests == []


def test_chat_messages_over_limit(server, backend):
    messages = [{"role": "user", "content": "x" * 150}, {"role": "assistant", "content": "y"},
                {"role": "user", "content": "z" * 60}]
    reply = server.post("/v1/chat/completions", json={"messages": messages})
    assert reply.status_code == 422
    assert "limit is 200" in reply.json()["detail"]
    assert reply.json()["error"]["param"] == "messages"


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "tool", "content": "x"}], "'tool' is not supported"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "'image_url' part"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "last message"),
        ([], "field 'messages'"),
    ],
    ids=["tool-role", "image-part", "assistant-last", "empty"],
)
def test_chat_invalid_messages(server, backend, messages, expected):
    reply = server.post("/v1/chat/completions", json={"model": "m", "messages": messages})
    assert reply.status_code == 422
    assert expected in reply.json()["detail"]
    assert backend.requests == []


def test_chat_rejects_several_choices(server):
    reply = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "n": 2})
    assert reply.status_code == 422
    assert "field 'n'" in reply.json()["detail"]


def test_megabyte_question_rejected(server, backend):
    with captured_logs() as records:
        reply = server.post("/unlearn/", json={"question": "x" * 1_000_000})
    assert reply.status_code == 413
    assert "limit is 262144 bytes" in reply.json()["detail"]
    assert backend.requests == []
    assert any("over the limit" in record.getMessage() for record in records)
    follow_up = server.post("/unlearn/", json={"question": "Still there?"})
    assert follow_up.status_code == 200
    assert follow_up.json() == {"response": "Answer: Still there?"}


def test_chunked_megabyte_rejected(server, backend):
    payload = json.dumps({"question": "x" * 1_000_000}).encode()

    def chunks():
        for start in range(0, len(payload), 65536):
            yield payload[start:start + 65536]

    reply = server.post("/unlearn/", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in reply.request.headers
    assert reply.status_code == 413
    assert "request body is over 262144 bytes" in reply.json()["detail"]
    assert backend.requests == []
    assert server.post("/unlearn/", json={"question": "Next?"}).status_code == 200


def _call_middleware(headers: list, body_parts: list[bytes]):
    """Run BodySizeLimitMiddleware directly, as a server without its own header checks would."""
    from relearn_local.serve.limits import BodySizeLimitMiddleware

    received: list = []
    sent: list = []
    reads = 0

    async def app(scope, receive, send):
        received.append(await receive())

    async def receive():
        nonlocal reads
        reads += 1
        part = body_parts[reads - 1]
        return {"type": "http.request", "body": part, "more_body": reads < len(body_parts)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/unlearn/", "headers": headers, "client": ("127.0.0.1", 1)}
    asyncio.run(BodySizeLimitMiddleware(app, max_bytes=10)(scope, receive, send))
    return received, sent, reads


@pytest.mark.parametrize(
    ("headers", "parts", "status", "reads"),
    [
        ([(b"content-length", b"abc")], [b"{}"], 400, 0),
        ([(b"content-length", b"-5")], [b"{}"], 400, 0),
        ([(b"content-length", b"11")], [b"x" * 11], 413, 0),
        ([], [b"x" * 6, b"x" * 6, b"x" * 6], 413, 2),
    ],
    ids=["not-a-number", "negative", "declared-too-large", "chunked-too-large"],
)
def test_body_limit_middleware_rejects(headers, parts, status, reads):
    received, sent, read_count = _call_middleware(headers, parts)
    assert received == []
    assert sent[0]["status"] == status
    assert json.loads(sent[1]["body"])["detail"]
    assert read_count == reads


def test_body_limit_middleware_passes_body():
    received, sent, _ = _call_middleware([(b"content-length", b"10")], [b"x" * 4, b"y" * 6])
    assert received == [{"type": "http.request", "body": b"xxxxyyyyyy", "more_body": False}]
    assert sent == []


def _post_in_thread(url: str, body: dict, results: list, index: int) -> threading.Thread:
    def post() -> None:
        results[index] = httpx.post(url, json=body, timeout=60)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_queue_full_gets_503():
    backend = FakeBackend()
    backend.gate.clear()
    app = create_app(make_config(max_pending=2), backend=backend)
    with running_server(app) as url:
        results: list = [None, None]
        threads = [_post_in_thread(f"{url}/unlearn/", {"question": f"Q{index}"}, results, index) for index in range(2)]
        wait_until(lambda: httpx.get(f"{url}/health").json()["pending"]["unlearned"] == 2, "two requests are admitted")
        with captured_logs() as records:
            rejected = httpx.post(f"{url}/unlearn/", json={"question": "Q2"})
        health_while_busy = httpx.get(f"{url}/health")
        backend.gate.set()
        for thread in threads:
            thread.join(60)
        after = httpx.post(f"{url}/unlearn/", json={"question": "Q3"})
    assert rejected.status_code == 503
    assert "busy" in rejected.json()["detail"]
    assert "limit 2" in rejected.json()["detail"]
    assert any("busy" in record.getMessage() for record in records)
    assert health_while_busy.status_code == 200
    assert [result.status_code for result in results] == [200, 200]
    assert sorted(result.json()["response"] for result in results) == ["Answer: Q0", "Answer: Q1"]
    assert after.status_code == 200
    assert backend.max_active == 1


def test_generation_serialized():
    backend = FakeBackend(piece_delay=0.01)
    app = create_app(make_config(max_pending=16), backend=backend)
    with running_server(app) as url:
        results: list = [None] * 6
        threads = [_post_in_thread(f"{url}/unlearn/", {"question": f"Question {index}"}, results, index)
                   for index in range(6)]
        for thread in threads:
            thread.join(60)
    assert [result.status_code for result in results] == [200] * 6
    assert [result.json()["response"] for result in results] == [f"Answer: Question {index}" for index in range(6)]
    assert len(backend.requests) == 6
    assert backend.max_active == 1


def test_queue_timeout_gets_503():
    backend = FakeBackend()
    backend.gate.clear()
    app = create_app(make_config(queue_timeout=0.3), backend=backend)
    with running_server(app) as url:
        results: list = [None]
        thread = _post_in_thread(f"{url}/unlearn/", {"question": "first"}, results, 0)
        wait_until(backend.started.is_set, "the first request starts generating")
        waited = httpx.post(f"{url}/unlearn/", json={"question": "second"}, timeout=30)
        backend.gate.set()
        thread.join(60)
    assert waited.status_code == 503
    assert "waited 0.3 s" in waited.json()["detail"]
    assert results[0].status_code == 200
    assert [list(request.messages)[-1]["content"] for request in backend.requests] == ["first"]


FAILURES = [
    (BackendError("llama.cpp could not decode the prompt"), 502, "the model backend failed: llama.cpp could not"),
    (ContextOverflowError("the prompt (3000 tokens) does not fit", needed=3100, limit=2048), 400,
     "the request does not fit the model: the prompt (3000 tokens)"),
    (BackendTimeoutError("llama.cpp generation passed the 5 s timeout"), 504, "the model timed out"),
    (BackendUnavailableError("Ollama at http://127.0.0.1:11434 did not answer"), 503, "backend is unavailable"),
    (RuntimeError("boom"), 500, "generation failed (RuntimeError)"),
]
FAILURE_IDS = ["backend-error", "context-overflow", "timeout", "unavailable", "unexpected-error"]


@pytest.mark.parametrize(("failure", "status", "expected"), FAILURES, ids=FAILURE_IDS)
def test_generation_failure_reported(server, backend, failure, status, expected):
    backend.fail_with = failure
    with captured_logs() as records:
        reply = server.post("/unlearn/", json={"question": "Q?"})
    assert reply.status_code == status
    assert expected in reply.json()["detail"]
    logged = [record for record in records if record.levelname in {"ERROR", "WARNING"}]
    assert any(str(failure) in record.getMessage() or (record.exc_info and record.exc_info[1] is failure)
               for record in logged)
    backend.fail_with = None
    assert server.post("/unlearn/", json={"question": "Again?"}).status_code == 200
    assert server.get("/health").json()["errors"] == (1 if status >= 500 else 0)


@pytest.mark.parametrize(("failure", "status", "expected"), FAILURES, ids=FAILURE_IDS)
def test_stream_failure_at_start(server, backend, failure, status, expected):
    backend.fail_with = failure
    backend.fail_after_pieces = 0
    body = {"messages": [{"role": "user", "content": "one two"}], "stream": True}
    reply = server.post("/v1/chat/completions", json=body)
    assert reply.status_code == status
    assert expected in reply.json()["detail"]
    backend.fail_with = None
    backend.fail_after_pieces = None
    assert server.get("/health").json()["pending"]["unlearned"] == 0
    assert server.post("/unlearn/", json={"question": "Again?"}).status_code == 200


def test_stream_failure_sends_error_event(server, backend):
    backend.fail_with = BackendError("the model stopped")
    backend.fail_after_pieces = 2
    body = {"messages": [{"role": "user", "content": "one two three four"}], "stream": True}
    with captured_logs() as records:
        with server.stream("POST", "/v1/chat/completions", json=body) as reply:
            events = parse_sse(reply.read().decode())
    assert events[-1] == {"error": {"message": "the model backend failed: the model stopped", "type": "backend_error"}}
    assert "[DONE]" not in events
    assert any("the model stopped" in record.getMessage() for record in records)
    assert server.get("/health").json()["errors"] == 1
    backend.fail_with = None
    backend.fail_after_pieces = None
    assert server.post("/unlearn/", json={"question": "Again?"}).status_code == 200


def test_stream_disconnect_frees_model():
    backend = FakeBackend(piece_delay=0.05)
    app = create_app(make_config(max_pending=1, max_tokens=200), backend=backend)
    words = " ".join(f"w{index}" for index in range(150))
    body = {"messages": [{"role": "user", "content": words}], "stream": True}
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                lines = reply.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
        wait_until(backend.stream_closed.is_set, "the stream generator is closed")
        wait_until(lambda: httpx.get(f"{url}/health").json()["pending"]["unlearned"] == 0, "the place is released")
        follow_up = httpx.post(f"{url}/unlearn/", json={"question": "Next?"}, timeout=30)
    assert json.loads(first[len("data: "):])["object"] == "chat.completion.chunk"
    assert backend.stream_pieces_sent < 150
    assert follow_up.status_code == 200


def test_original_needs_compare(server):
    reply = server.post("/original/", json={"question": "Q?"})
    assert reply.status_code == 404
    assert "--compare" in reply.json()["detail"]
    assert server.post("/compare/", json={"question": "Q?"}).status_code == 404


def test_compare_answers_with_both_models():
    unlearned = FakeBackend(prefix="Unlearned")
    original = FakeBackend(model="base", prefix="Original")
    config = make_config(compare="gemma3-270m")
    app = create_app(config, backend=unlearned, compare_backend=original)
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            health = client.get("/health").json()
            original_reply = client.post("/original/", json={"question": "Who is Mara?"})
            both = client.post("/compare/", json={"question": "Who is Mara?"})
            routed = client.post("/v1/chat/completions",
                                 json={"model": "gemma3-270m", "messages": [{"role": "user", "content": "Hi"}]})
            models = client.get("/v1/models").json()
    assert health["compare"] == {"model": "gemma3-270m", "backend": {"backend": "fake", "model": "base"}}
    assert original_reply.json() == {"response": "Original: Who is Mara?"}
    assert both.json() == {
        "question": "Who is Mara?",
        "unlearned": {"model": "unlearned.gguf", "response": "Unlearned: Who is Mara?"},
        "original": {"model": "gemma3-270m", "response": "Original: Who is Mara?"},
    }
    assert routed.json()["choices"][0]["message"]["content"] == "Original: Hi"
    assert routed.json()["model"] == "gemma3-270m"
    assert [card["id"] for card in models["data"]] == ["unlearned.gguf", "gemma3-270m"]


def test_passed_backends_left_open():
    backend = FakeBackend()
    with captured_logs() as records:
        with running_server(create_app(make_config(), backend=backend)):
            pass
    assert backend.closed is False
    messages = [record.getMessage() for record in records]
    assert any(message.startswith("serve started") for message in messages)
    assert any(message.startswith("serve stopped") for message in messages)
