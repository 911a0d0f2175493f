"""The serve API with the embedded Gemma 3 270M through llama.cpp, on a loopback port, and the serve command."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from relearn_local.serve import ServeConfig, create_app
from serve_fakes import parse_sse, running_server

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(900)]

QUESTION = "What is the capital of France?"
TURN_MARKERS = ("<start_of_turn>", "<end_of_turn>", "<bos>")


@pytest.fixture(scope="module")
def gguf_path():
    from relearn_local.models import embedded_gguf_path

    return embedded_gguf_path()


@pytest.fixture(scope="module")
def real_server():
    """Serve the embedded model by name rather than by path.

    Resolving a GGUF path parses all of its metadata, which is slow for Gemma's 262k-token vocabulary.
    The serve command test below covers a GGUF path.
    """
    from relearn_local.backends import get_backend

    backend = get_backend("llamacpp", model=None)
    app = create_app(ServeConfig(model="gemma3-270m", max_tokens=32), backend=backend)
    try:
        with running_server(app) as url:
            with httpx.Client(base_url=url, timeout=300) as client:
                yield client
    finally:
        backend.close()


def test_source_embedded_base(gguf_path):
    from relearn_local.serve import resolve_model_source

    source = resolve_model_source("gemma3-270m")
    assert source.backend == "llamacpp"
    assert source.model == "gemma3-270m"
    assert str(gguf_path) in source.note


def test_real_unlearn_answers(real_server):
    reply = real_server.post("/unlearn/", json={"question": QUESTION})
    assert reply.status_code == 200
    text = reply.json()["response"]
    assert text.strip()
    for marker in TURN_MARKERS:
        assert marker not in text


def test_real_stream_matches_completion(real_server):
    body = {"model": "gemma", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24}
    completion = real_server.post("/v1/chat/completions", json=body).json()
    with real_server.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
        events = parse_sse(reply.read().decode())
    streamed = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1])
    assert events[-1] == "[DONE]"
    assert completion["usage"]["completion_tokens"] > 0
    assert completion["choices"][0]["finish_reason"] in {"stop", "length"}
    assert streamed == completion["choices"][0]["message"]["content"]


def test_real_concurrent_requests_agree(real_server):
    results: list = [None] * 3

    def post(index: int) -> None:
        results[index] = real_server.post("/unlearn/", json={"question": QUESTION, "max_tokens": 16})

    threads = [threading.Thread(target=post, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert [result.status_code for result in results] == [200, 200, 200]
    answers = {result.json()["response"] for result in results}
    assert len(answers) == 1


def test_real_megabyte_question_rejected(real_server):
    reply = real_server.post("/unlearn/", json={"question": "x" * 1_000_000})
    assert reply.status_code == 413
    assert "limit is 262144 bytes" in reply.json()["detail"]
    follow_up = real_server.post("/unlearn/", json={"question": QUESTION, "max_tokens": 8})
    assert follow_up.status_code == 200
    assert follow_up.json()["response"].strip()


def _read_lines(stream, lines: "queue.Queue[str]") -> None:
    for line in stream:
        lines.put(line)


def _wait_for_line(lines: "queue.Queue[str]", prefix: str, seen: list[str], seconds: float = 300) -> str:
    while True:
        try:
            line = lines.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"no line starting with {prefix!r} within {seconds} s; output: {seen}") from None
        seen.append(line)
        if line.startswith(prefix):
            return line


def test_cli_serve_folder(gguf_path, tmp_path):
    """``relearn-local serve`` on an export-like folder: prints the chosen GGUF and URL, answers, stops on Ctrl+C."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "relearn-q4_k_m.gguf").symlink_to(gguf_path)
    command = [sys.executable, "-m", "relearn_local", "serve", "--model", str(folder), "--port", "0",
               "--max-tokens", "16"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        model_line = _wait_for_line(lines, "Model: ", seen)
        url = _wait_for_line(lines, "Serving on ", seen).split()[2]
        reply = httpx.post(f"{url}/unlearn/", json={"question": QUESTION}, timeout=300)
        page = httpx.get(f"{url}/", timeout=30)
        too_large = httpx.post(f"{url}/unlearn/", json={"question": "x" * 1_000_000}, timeout=30)
        health = httpx.get(f"{url}/health", timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
    _wait_for_line(lines, "Stopped after ", seen, seconds=30)
    assert "relearn-q4_k_m.gguf (the only .gguf in" in model_line
    assert url.startswith("http://127.0.0.1:")
    assert reply.status_code == 200
    assert reply.json()["response"].strip()
    assert 'id="question"' in page.text
    assert too_large.status_code == 413
    assert health.json()["requests"] == 1
    assert process.returncode == 0
    assert any("Stopped after 1 request (0 failed)." in line for line in seen)
