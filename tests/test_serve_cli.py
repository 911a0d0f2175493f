"""Serve set-up without a real model: model sources, config checks, run_serve and the serve command."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest
from click.testing import CliRunner

from relearn_local.cli import cli
from relearn_local.errors import ConfigError, ModelError
from relearn_local.serve import ServeConfig, ServeResult, resolve_model_source, run_serve
from serve_fakes import FakeBackend, WAIT_SECONDS

pytestmark = pytest.mark.timeout(120)


def write_gguf(path):
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_source_ollama():
    source = resolve_model_source("ollama:relearn-demo")
    assert source.backend == "ollama"
    assert source.model == "relearn-demo"
    assert source.label == "ollama:relearn-demo"
    assert source.display == "ollama:relearn-demo (through Ollama)"


def test_source_gguf_file(tmp_path):
    path = write_gguf(tmp_path / "model-q4_k_m.gguf")
    source = resolve_model_source(str(path))
    assert source.backend == "llamacpp"
    assert source.model == str(path.resolve())
    assert source.label == "model-q4_k_m.gguf"
    assert source.note is None


def test_source_folder_with_one_gguf(tmp_path):
    path = write_gguf(tmp_path / "relearn-q4_k_m.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./relearn-q4_k_m.gguf\n")
    source = resolve_model_source(str(tmp_path))
    assert source.model == str(path.resolve())
    assert source.label == "relearn-q4_k_m.gguf"
    assert "the only .gguf in" in source.note
    assert source.display == source.note


@pytest.mark.parametrize(
    ("setup", "spec", "expected"),
    [
        (lambda folder: None, "ollama:", "names no Ollama model"),
        (lambda folder: None, "ollama:  ", "names no Ollama model"),
        (lambda folder: None, "{folder}/missing.gguf", "no such file or folder"),
        (lambda folder: (folder / "weights.bin").write_bytes(b"PK\x03\x04"), "{folder}/weights.bin", "is not a GGUF file"),
        (lambda folder: (folder / "fake.gguf").write_text("not a model"), "{folder}/fake.gguf", "is not a GGUF file"),
        (lambda folder: None, "{folder}", "contains no .gguf file"),
        (lambda folder: [write_gguf(folder / "a.gguf"), write_gguf(folder / "b.gguf")], "{folder}",
         "contains 2 .gguf files (a.gguf, b.gguf)"),
    ],
    ids=["empty-ollama-name", "blank-ollama-name", "missing", "not-gguf", "gguf-suffix-wrong-magic",
         "empty-folder", "two-ggufs"],
)
def test_source_rejected(tmp_path, setup, spec, expected):
    setup(tmp_path)
    with pytest.raises(ModelError) as caught:
        resolve_model_source(spec.format(folder=tmp_path), option="--compare")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("--compare")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model": ""}, "serve needs a model"),
        ({"port": 70000}, "port 70000 is invalid"),
        ({"max_tokens": 0}, "max_tokens = 0 is invalid"),
        ({"max_pending": 0}, "max_pending = 0 is invalid"),
        ({"queue_timeout": -1.0}, "queue_timeout = -1.0 is invalid"),
        ({"temperature": -0.5}, "temperature = -0.5 is invalid"),
        ({"max_body_bytes": 1000}, "max_body_bytes = 1000 is too small"),
    ],
    ids=["no-model", "port", "max-tokens", "max-pending", "queue-timeout", "temperature", "body-vs-question"],
)
def test_config_rejected(overrides, expected):
    values = {"model": "m.gguf", **overrides}
    with pytest.raises(ConfigError) as caught:
        ServeConfig(**values).validate()
    assert expected in str(caught.value)


def test_run_serve_answers_and_stops(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    folder.mkdir()
    write_gguf(folder / "relearn-q4_k_m.gguf")
    backend = FakeBackend()
    loaded = []

    def fake_load(source, context_size, ollama_host=None):
        loaded.append((source.model, context_size))
        return backend

    monkeypatch.setattr("relearn_local.serve.server.load_backend", fake_load)
    config = ServeConfig(model=str(folder), port=0, context_size=1024)
    outcome: dict = {}

    def ask_and_stop(startup):
        outcome["reply"] = httpx.post(f"{startup.url}/unlearn/", json={"question": "Who?"}, timeout=30)
        startup.stop()

    def on_ready(startup):
        # on_ready runs on the server's event loop, so the request must come from another thread.
        outcome["startup"] = startup
        threading.Thread(target=ask_and_stop, args=(startup,)).start()

    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_serve(config, on_ready=on_ready,
                                                                                      log_level="warning")))
    thread.start()
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive()
    startup, result = outcome["startup"], outcome["result"]
    assert startup.url.startswith("http://127.0.0.1:")
    assert startup.port != 0
    assert "the only .gguf in" in startup.model.display
    assert loaded == [(str((folder / "relearn-q4_k_m.gguf").resolve()), 1024)]
    assert outcome["reply"].json() == {"response": "Answer: Who?"}
    assert isinstance(result, ServeResult)
    assert result.model == "relearn-q4_k_m.gguf"
    assert result.requests == 1
    assert result.errors == 0
    assert backend.closed is True


def test_run_serve_busy_port(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf")
    loaded = []
    monkeypatch.setattr("relearn_local.serve.server.load_backend", lambda *args, **kwargs: loaded.append(args))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            run_serve(ServeConfig(model=str(path), port=port))
    assert f"cannot listen on 127.0.0.1:{port}" in str(caught.value)
    assert "--port" in str(caught.value)
    assert loaded == []


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_without_model():
    result = run_cli("serve")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: serve needs a model: pass --model with a GGUF file, an export run folder or ollama:NAME"
    )


def test_cli_missing_model(tmp_path):
    result = run_cli("serve", "--model", str(tmp_path / "nope.gguf"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "no such file or folder" in lines[0]


def test_cli_config_precedence(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf")
    config_file = tmp_path / "relearn.yaml"
    config_file.write_text(f"serve:\n  model: {path}\n  max_tokens: 5\n  port: 9000\n")
    captured = {}

    def fake_run_serve(config, on_ready=None, log_level="info"):
        captured["config"] = config
        return ServeResult(url="http://127.0.0.1:9000", model="m.gguf", compare=None, requests=3, errors=1)

    monkeypatch.setattr("relearn_local.serve.run_serve", fake_run_serve)
    result = run_cli("serve", "--config", str(config_file), "--max-tokens", "7", "--max-pending", "3")
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert config.model == str(path)
    assert config.max_tokens == 7
    assert config.port == 9000
    assert config.max_pending == 3
    assert config.host == "127.0.0.1"
    assert "Stopped after 3 requests (1 failed)." in result.output


def test_cli_rejects_bad_limit(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    result = run_cli("serve", "--model", str(path), "--max-pending", "0")
    assert result.exit_code == 2
    assert "max_pending = 0 is invalid" in result.output
