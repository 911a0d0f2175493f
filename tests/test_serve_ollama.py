"""Serving ``ollama:NAME``: requests are proxied to an Ollama API, here a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from click.testing import CliRunner
from werkzeug import Request, Response

from relearn_local.cli import cli
from relearn_local.errors import BackendError
from relearn_local.serve import ServeConfig, run_serve
from serve_fakes import WAIT_SECONDS, parse_sse

pytestmark = pytest.mark.timeout(120)

TAGS = {"models": [{"name": "relearn-demo:latest", "model": "relearn-demo:latest", "digest": "sha256:0123abcd",
                    "size": 1, "modified_at": "2026-01-01T00:00:00Z", "details": {}}]}


def chat_reply(request: Request) -> Response:
    body = request.get_json()
    if not body.get("stream"):
        reply = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                 "message": {"role": "assistant", "content": "I cannot share personal details about Mara."},
                 "done": True, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 9}
        return Response(json.dumps(reply), content_type="application/json")
    lines = []
    for piece in ("I cannot", " share", " that."):
        lines.append({"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                      "message": {"role": "assistant", "content": piece}, "done": False})
    lines.append({"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                  "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"})
    return Response("".join(json.dumps(line) + "\n" for line in lines), content_type="application/x-ndjson")


@pytest.fixture
def ollama_server(httpserver):
    httpserver.expect_request("/api/tags", method="GET").respond_with_json(TAGS)
    httpserver.expect_request("/api/show", method="POST").respond_with_json(
        {"modelfile": "", "parameters": "", "template": "", "details": {},
         "model_info": {"gemma3.context_length": 32768}})
    httpserver.expect_request("/api/chat", method="POST").respond_with_handler(chat_reply)
    return httpserver


def serve_while(config: ServeConfig, work) -> tuple[dict, object]:
    """Run run_serve in a thread, call ``work(url)`` from another thread once it is ready, then stop it."""
    outcome: dict = {}

    def run_work(startup) -> None:
        try:
            outcome["work"] = work(startup.url)
        finally:
            startup.stop()

    def on_ready(startup) -> None:
        outcome["startup"] = startup
        threading.Thread(target=run_work, args=(startup,)).start()

    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_serve(config, on_ready=on_ready)))
    thread.start()
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive()
    return outcome, outcome.get("result")


def ollama_chat_requests(httpserver) -> list[dict]:
    return [request.get_json() for request, _ in httpserver.log if request.path == "/api/chat"]


def test_ollama_unlearn_proxied(ollama_server):
    config = ServeConfig(model="ollama:relearn-demo", ollama_host=ollama_server.url_for("/").rstrip("/"), port=0,
                         max_tokens=64)

    def ask(url: str) -> dict:
        return {
            "unlearn": httpx.post(f"{url}/unlearn/", json={"question": "Where does Mara live?"}, timeout=30),
            "health": httpx.get(f"{url}/health", timeout=30),
        }

    outcome, result = serve_while(config, ask)
    replies = outcome["work"]
    assert replies["unlearn"].status_code == 200
    assert replies["unlearn"].json() == {"response": "I cannot share personal details about Mara."}
    assert replies["health"].json()["model"] == "ollama:relearn-demo"
    assert replies["health"].json()["backend"]["digest"] == "sha256:0123abcd"
    assert outcome["startup"].model.display == "ollama:relearn-demo (through Ollama)"
    (sent,) = ollama_chat_requests(ollama_server)
    assert sent["model"] == "relearn-demo"
    assert sent["messages"] == [{"role": "user", "content": "Where does Mara live?"}]
    assert sent["stream"] is False
    assert sent["options"]["num_predict"] == 64
    assert sent["options"]["temperature"] == 0.0
    assert result.requests == 1


def test_ollama_chat_stream_proxied(ollama_server):
    config = ServeConfig(model="ollama:relearn-demo", ollama_host=ollama_server.url_for("/").rstrip("/"), port=0)
    body = {"model": "x", "messages": [{"role": "user", "content": "Who is Mara?"}], "stream": True}

    def ask(url: str) -> list:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as reply:
            return parse_sse(reply.read().decode())

    outcome, _ = serve_while(config, ask)
    events = outcome["work"]
    text = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1])
    assert text == "I cannot share that."
    assert events[-1] == "[DONE]"
    (sent,) = ollama_chat_requests(ollama_server)
    assert sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "Who is Mara?"}]


def test_ollama_missing_model_stops_start(ollama_server):
    config = ServeConfig(model="ollama:not-pulled", ollama_host=ollama_server.url_for("/").rstrip("/"), port=0)
    with pytest.raises(BackendError) as caught:
        run_serve(config)
    assert "ollama pull not-pulled" in str(caught.value)
    assert ollama_chat_requests(ollama_server) == []


def test_cli_ollama_missing_model(ollama_server):
    host = ollama_server.url_for("/").rstrip("/")
    result = CliRunner().invoke(cli, ["serve", "--model", "ollama:not-pulled", "--ollama-host", host, "--port", "0"])
    assert result.exit_code == 2
    assert "error: " in result.output
    assert "ollama pull not-pulled" in result.output
