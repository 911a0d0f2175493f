"""The Ollama backend against a real HTTP server on loopback that checks the exact requests Ollama receives."""

from __future__ import annotations

import json
import threading
import time

import pytest
from werkzeug import Response

from augment_fakes import DIGEST, FakeOllama, chat_response, start_server
from relearn_local.backends import get_backend
from relearn_local.backends.base import (BackendTimeoutError, BackendUnavailableError, ContextOverflowError,
                                         GenerationRequest, ModelNotFoundError)
from relearn_local.backends.ollama_options import (build_options, context_size_for, estimate_prompt_tokens,
                                                   find_model, normalize_model_name, parse_ollama_host)
from relearn_local.backends.schema import is_flat
from relearn_local.errors import BackendError, ConfigError

SCHEMA = {
    "type": "object",
    "properties": {"q0": {"type": "string", "minLength": 12, "maxLength": 500}},
    "required": ["q0"],
}
MESSAGES = [{"role": "system", "content": "Answer safely."}, {"role": "user", "content": "q0: Where does Mara live?"}]


@pytest.fixture
def server():
    server = start_server()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def fake(server):
    fake = FakeOllama(server)
    yield fake
    fake.release.set()


def backend_for(fake, **options):
    return get_backend("ollama", model="llama3", host=fake.host, retry_backoff=0.01, **options)


HOSTS = [
    (None, "http://127.0.0.1:11434", "unset means the local default"),
    ("", "http://127.0.0.1:11434", "empty means the local default"),
    ("127.0.0.1:11434", "http://127.0.0.1:11434", "host and port"),
    ("127.0.0.1", "http://127.0.0.1:11434", "no port means Ollama's port"),
    (":8080", "http://127.0.0.1:8080", "only a port"),
    ("localhost:9000", "http://localhost:9000", "a host name"),
    ("http://localhost", "http://localhost:80", "a scheme without port means the scheme's port"),
    ("https://localhost", "https://localhost:443", "https default port"),
    ("http://127.0.0.1:11434/", "http://127.0.0.1:11434", "trailing slash dropped"),
    ("[::1]:11434", "http://[::1]:11434", "bracketed IPv6 with port"),
    ("[::1]", "http://[::1]:11434", "bracketed IPv6 without port"),
    ("0.0.0.0", "http://127.0.0.1:11434", "the wildcard a server binds is reached on loopback"),
    ("0.0.0.0:5000", "http://127.0.0.1:5000", "wildcard with port"),
    ("[::]:11434", "http://[::1]:11434", "IPv6 wildcard"),
    ("  127.0.0.1:11434  ", "http://127.0.0.1:11434", "surrounding spaces"),
    ("http://127.0.0.1:11434/ollama", "http://127.0.0.1:11434/ollama", "a path behind a proxy"),
]


@pytest.mark.parametrize("value, expected, reason", HOSTS, ids=[row[2] for row in HOSTS])
def test_parse_ollama_host(value, expected, reason):
    assert parse_ollama_host(value) == expected, reason


@pytest.mark.parametrize("value", ["ftp://127.0.0.1", "127.0.0.1:notaport", "127.0.0.1:99999", "http://u:p@127.0.0.1"])
def test_parse_ollama_host_rejects(value):
    with pytest.raises(ConfigError):
        parse_ollama_host(value)


def test_context_size_power_of_two():
    assert context_size_for(100, 512) == 2048
    assert context_size_for(3000, 512) == 4096
    assert context_size_for(4000, 512) == 8192
    assert context_size_for(8000, 1000) == 16384


def test_prompt_estimate_overestimates_english_and_counts_cjk():
    english = [{"role": "user", "content": "word " * 1000}]
    assert estimate_prompt_tokens(english) >= 1000 * 5 // 4.5
    chinese = [{"role": "user", "content": "占位人物甲" * 200}]
    assert estimate_prompt_tokens(chinese) >= 1000


def test_build_options():
    request = GenerationRequest(messages=MESSAGES, max_tokens=64, temperature=0.3, seed=7, stop=("END",))
    assert build_options(request, 4096) == {"seed": 7, "temperature": 0.3, "num_predict": 64, "num_ctx": 4096,
                                             "stop": ["END"]}


def test_model_names():
    assert normalize_model_name("llama3") == "llama3:latest"
    assert normalize_model_name("qwen2.5:7b") == "qwen2.5:7b"
    assert normalize_model_name("registry.local:5000/team/model") == "registry.local:5000/team/model:latest"
    listed = [{"model": "llama3:latest", "digest": "a"}, {"name": "qwen2.5:7b", "digest": "b"}]
    assert find_model("llama3", listed)["digest"] == "a"
    assert find_model("qwen2.5:7b", listed)["digest"] == "b"
    assert find_model("qwen2.5", listed) is None


def test_chat_request_body_is_exact(fake):
    backend = backend_for(fake)
    backend.check()
    result = backend.generate(GenerationRequest(messages=MESSAGES, max_tokens=64, temperature=0.0, seed=3,
                                                schema=SCHEMA))
    assert json.loads(result.text) == {"q0": "I can't share that; it is private information. You asked: where does mara live?"}
    assert result.prompt_tokens == 100
    assert result.completion_tokens == 20
    assert fake.chat_bodies == [{
        "model": "llama3",
        "messages": MESSAGES,
        "tools": [],
        "stream": False,
        "format": SCHEMA,
        "options": {"seed": 3, "temperature": 0.0, "num_predict": 64, "num_ctx": 2048},
    }]


def test_check_records_digest_and_context(fake):
    backend = backend_for(fake)
    backend.check()
    described = backend.describe()
    assert described["digest"] == DIGEST
    assert described["model"] == "llama3"
    assert described["host"] == f"http://{fake.host}"
    assert described["context_limit"] == 32768


def test_missing_model_names_pull_command(fake):
    backend = get_backend("ollama", model="mistral-nemo", host=fake.host)
    with pytest.raises(ModelNotFoundError) as caught:
        backend.check()
    assert caught.value.missing == ["mistral-nemo"]
    assert "ollama pull mistral-nemo" in str(caught.value)


def test_pydantic_schema_is_sent_flat(fake):
    from typing import Optional

    from pydantic import BaseModel

    class Verdict(BaseModel):
        reason: str
        leaks: bool
        note: Optional[str] = None

    class Reply(BaseModel):
        a1: Verdict

    schema = Reply.model_json_schema()
    assert not is_flat(schema)
    fake.scripts["answers"] = lambda body: json.dumps({"a1": {"reason": "r", "leaks": False}})
    backend_for(fake).generate(GenerationRequest(messages=MESSAGES, schema=schema))
    sent = fake.chat_bodies[-1]["format"]
    assert is_flat(sent)
    assert sent["required"] == ["a1"]
    assert sent["properties"]["a1"]["required"] == ["reason", "leaks"]
    assert sent["properties"]["a1"]["properties"]["note"] == {"type": "string"}


def test_long_prompt_gets_large_context(fake):
    long_answer = "person-a@example.invalid wrote this. " + "More private detail follows here. " * 360
    messages = [{"role": "user", "content": long_answer}]
    backend_for(fake).generate(GenerationRequest(messages=messages, max_tokens=256, schema=SCHEMA))
    options = fake.chat_bodies[-1]["options"]
    assert len(long_answer) > 12000
    assert options["num_ctx"] >= estimate_prompt_tokens(messages) + 256
    assert options["num_ctx"] > 2048
    assert "person-a@example.invalid" in fake.chat_bodies[-1]["messages"][0]["content"]


def test_prompt_beyond_max_context_overflows(fake):
    messages = [{"role": "user", "content": "x " * 50000}]
    with pytest.raises(ContextOverflowError) as caught:
        backend_for(fake, max_context=8192).generate(GenerationRequest(messages=messages, max_tokens=256))
    assert caught.value.limit == 8192
    assert fake.chat_bodies == []


def test_server_error_is_retried(fake):
    replies = iter([Response("overloaded", status=503), Response("overloaded", status=500)])
    fake.scripts["answers"] = lambda body: next(replies, None) or json.dumps({"q0": "I can't share that with you."})
    result = backend_for(fake, retries=2).generate(GenerationRequest(messages=MESSAGES, schema=SCHEMA))
    assert json.loads(result.text)["q0"] == "I can't share that with you."
    assert len(fake.chat_bodies) == 3


def test_server_error_after_retries_is_unavailable(fake):
    fake.scripts["answers"] = lambda body: Response("broken", status=500)
    with pytest.raises(BackendUnavailableError):
        backend_for(fake, retries=1).generate(GenerationRequest(messages=MESSAGES, schema=SCHEMA))
    assert len(fake.chat_bodies) == 2


def test_client_error_is_not_retried(fake):
    fake.scripts["answers"] = lambda body: Response(json.dumps({"error": "invalid format"}), status=400,
                                                    content_type="application/json")
    with pytest.raises(BackendError) as caught:
        backend_for(fake, retries=3).generate(GenerationRequest(messages=MESSAGES, schema=SCHEMA))
    assert "invalid format" in str(caught.value)
    assert len(fake.chat_bodies) == 1


def test_unreachable_server():
    server = start_server()
    host = f"127.0.0.1:{server.port}"
    server.stop()
    backend = get_backend("ollama", model="llama3", host=host, retries=1, retry_backoff=0.01, timeout=2)
    with pytest.raises(BackendUnavailableError) as caught:
        backend.check()
    assert "ollama serve" in str(caught.value)


def test_never_answering_server_times_out(fake):
    def hang(body):
        fake.release.wait(30)
        return json.dumps({"q0": "late"})

    fake.scripts["answers"] = hang
    backend = backend_for(fake, timeout=1, retries=1)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError):
        backend.generate(GenerationRequest(messages=MESSAGES, schema=SCHEMA))
    assert time.monotonic() - started < 15
    assert len(fake.chat_bodies) == 2


def _trickle(body, pause, pieces):
    payload = json.dumps({"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                          "message": {"role": "assistant", "content": json.dumps({"q0": "I can't share that."})},
                          "done": True, "done_reason": "stop"})
    step = max(1, len(payload) // pieces)

    def chunks():
        for start in range(0, len(payload), step):
            time.sleep(pause)
            yield payload[start:start + step].encode()

    return Response(chunks(), content_type="application/json", direct_passthrough=True)


def test_slow_trickling_reply_times_out_per_try(fake):
    fake.scripts["answers"] = lambda body: _trickle(body, pause=0.25, pieces=200)
    backend = backend_for(fake, timeout=1, retries=0)
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError):
        backend.generate(GenerationRequest(messages=MESSAGES, schema=SCHEMA))
    assert time.monotonic() - started < 10


def test_slow_reply_within_timeout_finishes(fake):
    fake.scripts["answers"] = lambda body: _trickle(body, pause=0.1, pieces=8)
    result = backend_for(fake, timeout=20, retries=0).generate(GenerationRequest(messages=MESSAGES, schema=SCHEMA))
    assert json.loads(result.text) == {"q0": "I can't share that."}


def test_stream_yields_pieces(fake):
    def streamed(body):
        assert body["stream"] is True
        lines = [json.dumps({"model": "llama3", "created_at": "2026-01-01T00:00:00Z",
                             "message": {"role": "assistant", "content": piece}, "done": False})
                 for piece in ["Hel", "lo"]]
        lines.append(json.dumps({"model": "llama3", "created_at": "2026-01-01T00:00:00Z",
                                 "message": {"role": "assistant", "content": ""}, "done": True,
                                 "done_reason": "stop"}))
        return Response("\n".join(lines) + "\n", content_type="application/x-ndjson")

    fake.scripts["answers"] = streamed
    pieces = list(backend_for(fake).stream(GenerationRequest(messages=[{"role": "user", "content": "hi"}])))
    assert pieces == ["Hel", "lo"]
    assert fake.chat_bodies[-1]["options"]["num_predict"] == 512


def test_concurrent_requests_share_backend(fake):
    backend = backend_for(fake)
    results = []

    def ask(index):
        messages = [{"role": "user", "content": f"q0: question {index}"}]
        results.append(backend.generate(GenerationRequest(messages=messages, schema=SCHEMA)).text)

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 6
    assert len(fake.chat_bodies) == 6


def test_response_without_model_info_keeps_default_context(server):
    server.expect_request("/api/tags").respond_with_json(
        {"models": [{"name": "llama3:latest", "model": "llama3:latest", "digest": "abc", "size": 1}]})
    server.expect_request("/api/show", method="POST").respond_with_json({"modelfile": ""})
    backend = get_backend("ollama", model="llama3", host=f"127.0.0.1:{server.port}")
    backend.check()
    assert backend.describe()["context_limit"] == 32768
    assert backend.describe()["digest"] == "abc"


def test_done_reason_length_is_reported(fake):
    fake.scripts["answers"] = lambda body: chat_response("llama3", '{"q0": "cut', done_reason="length")
    result = backend_for(fake).generate(GenerationRequest(messages=MESSAGES, schema=SCHEMA))
    assert result.finish_reason == "length"
