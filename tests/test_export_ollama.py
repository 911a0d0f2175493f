"""``--ollama-create`` against a loopback server playing Ollama, and adapter mode.

The server checks the exact requests Ollama's API receives: the blob upload
(``POST /api/blobs/sha256:<digest>`` with the file's bytes), the create
request (file names mapped to digests, TEMPLATE, parameters), and the
listing that confirms the model exists.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from export_support import (FORGET, converter, export_base_dir, export_tiny, make_adapter, session_home,  # noqa: F401
                            tiny_adapter, tiny_export_f16)
from relearn_local.cli import cli
from relearn_local.errors import BackendError, ExportError
from relearn_local.export.modelfile import parse_modelfile
from relearn_local.export.ollama_create import create_ollama_model, listed_name


class FakeOllama:
    """Records uploads and responds like Ollama's create, blob and tags endpoints."""

    def __init__(self, server, listed: bool = True, create_status: int = 200):
        self.server = server
        self.blobs: dict[str, bytes] = {}
        self.creates: list[dict] = []
        self.listed = listed
        self.create_status = create_status
        server.expect_request(_blob_path(), method="POST").respond_with_handler(self.upload)
        server.expect_request("/api/create", method="POST").respond_with_handler(self.create)
        server.expect_request("/api/tags", method="GET").respond_with_handler(self.tags)

    def upload(self, request):
        from werkzeug import Response

        digest = request.path.rsplit("/", 1)[-1]
        self.blobs[digest] = request.get_data()
        return Response(status=201)

    def create(self, request):
        from werkzeug import Response

        self.creates.append(json.loads(request.get_data()))
        if self.create_status != 200:
            return Response(json.dumps({"error": "invalid model name"}), status=self.create_status,
                            content_type="application/json")
        return Response(json.dumps({"status": "success"}), content_type="application/json")

    def tags(self, request):
        from werkzeug import Response

        models = []
        if self.listed and self.creates:
            name = listed_name(self.creates[-1]["model"])
            models.append({"name": name, "model": name, "modified_at": "2026-01-01T00:00:00Z", "size": 1,
                           "digest": "0" * 64, "details": {"format": "gguf", "family": "gemma3"}})
        return Response(json.dumps({"models": models}), content_type="application/json")

    def paths(self) -> list[tuple[str, str]]:
        return [(request.method, request.path) for request, _ in self.server.log]


def _blob_path():
    import re

    return re.compile(r"^/api/blobs/sha256:[0-9a-f]{64}$")


def sha256_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_uploads_then_creates_then_checks_listing(httpserver, tmp_path):
    fake = FakeOllama(httpserver)
    model = tmp_path / "relearned-gemma-q4_k_m.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    parameters = {"num_ctx": 4096, "temperature": 0.0, "top_k": 64, "top_p": 0.95, "stop": ["<end_of_turn>"]}
    result = create_ollama_model(httpserver.url_for("/"), "relearned-gemma", model, "{{ .Prompt }}", parameters)
    digest = sha256_digest(model)
    assert fake.paths() == [("POST", f"/api/blobs/{digest}"), ("POST", "/api/create"), ("GET", "/api/tags")]
    assert fake.blobs[digest] == model.read_bytes()
    assert fake.creates == [{
        "model": "relearned-gemma",
        "stream": False,
        "files": {"relearned-gemma-q4_k_m.gguf": digest},
        "template": "{{ .Prompt }}",
        "parameters": parameters,
    }]
    assert result.listed_as == "relearned-gemma:latest"
    assert result.digests == {model.name: digest}


def test_create_not_listed_is_a_failure(httpserver, tmp_path):
    FakeOllama(httpserver, listed=False)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(ExportError, match="does not list it"):
        create_ollama_model(httpserver.url_for("/"), "relearned-gemma", model, "{{ .Prompt }}", {})


def test_create_rejected_by_server(httpserver, tmp_path):
    FakeOllama(httpserver, create_status=400)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(BackendError, match="rejected creating relearned-gemma.*invalid model name.*400"):
        create_ollama_model(httpserver.url_for("/"), "relearned-gemma", model, "{{ .Prompt }}", {})


def test_unreachable_ollama(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(BackendError, match="cannot reach Ollama at http://127.0.0.1:.*OLLAMA_HOST"):
        create_ollama_model(f"http://127.0.0.1:{port}", "relearned-gemma", model, "{{ .Prompt }}", {}, timeout=5)


def test_unreachable_ollama_fails_before_merge(tmp_path, tiny_adapter, converter):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, [
        "export", "--adapter", str(tiny_adapter), "--out", str(out), "--quant", "Q8_0", "--forget", str(FORGET),
        "--offline", "--dry-run", "--ollama-create", "--ollama-host", f"http://127.0.0.1:{port}",
    ])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot reach Ollama at http://127.0.0.1:{port}")
    assert not out.exists()


def test_dry_run_with_reachable_ollama(httpserver, tmp_path, tiny_adapter, converter):
    fake = FakeOllama(httpserver)
    result = CliRunner().invoke(cli, [
        "export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "export"), "--quant", "Q8_0",
        "--forget", str(FORGET), "--offline", "--dry-run", "--ollama-create", "--ollama-host", httpserver.url_for("/"),
    ])
    assert result.exit_code == 0, result.output
    assert fake.paths() == [("GET", "/api/tags")]
    assert "q8_0: 8-bit" in result.output


@pytest.mark.parametrize("name, listed", [("relearned-gemma", "relearned-gemma:latest"),
                                          ("me/relearned:v1", "me/relearned:v1"),
                                          ("host:11434/me/model", "host:11434/me/model:latest")])
def test_listed_name(name, listed):
    assert listed_name(name) == listed


def export_f16_to_ollama(adapter: Path, out: Path, host: str):
    """Run the export command at f16 with one parity question and --ollama-create against ``host``."""
    return CliRunner().invoke(cli, [
        "--quiet", "export", "--adapter", str(adapter), "--out", str(out), "--name", "relearned-tiny",
        "--quant", "f16", "--forget", str(FORGET), "--offline", "--parity-questions", "1",
        "--ollama-create", "--ollama-host", host,
    ])


def test_cli_export_with_ollama_create(httpserver, tmp_path, tiny_adapter, converter):
    fake = FakeOllama(httpserver)
    out = tmp_path / "export"
    result = export_f16_to_ollama(tiny_adapter, out, httpserver.url_for("/"))
    assert result.exit_code == 0, result.output
    gguf = out / "relearned-tiny-f16.gguf"
    modelfile = parse_modelfile((out / "Modelfile").read_text(encoding="utf-8"))
    digest = sha256_digest(gguf)
    assert fake.blobs[digest] == gguf.read_bytes()
    request = fake.creates[0]
    assert request["files"] == {gguf.name: digest}
    assert request["template"] == modelfile.template
    assert request["parameters"]["stop"] == modelfile.parameters["stop"] == ["<end_of_turn>"]
    assert request["parameters"]["num_ctx"] == int(modelfile.parameters["num_ctx"][0])
    assert "system" not in request
    assert "ollama run relearned-tiny" in result.output
    summary = json.loads((out / "export_summary.json").read_text(encoding="utf-8"))
    assert summary["ollama_created"] is True
    assert summary["ollama"]["listed_as"] == "relearned-tiny:latest"


def test_failed_parity_sends_nothing_to_ollama(httpserver, tmp_path, tiny_adapter, converter, monkeypatch):
    from relearn_local.export.parity import ParityItem, ParityReport

    def restoring_parity(gguf_path, modelfile_text, answers, *args, **kwargs):
        question = answers[0].question
        leaked = ParityItem(question, "I can't share that.", "She lives at 14 Kråkeveien.", [1], [1], True, 1, True,
                            [], ["14 Kråkeveien"])
        return ParityReport("f16", True, 8, [leaked])

    monkeypatch.setattr("relearn_local.export.stage.run_parity", restoring_parity)
    fake = FakeOllama(httpserver)
    out = tmp_path / "export"
    result = export_f16_to_ollama(tiny_adapter, out, httpserver.url_for("/"))
    assert result.exit_code == 1, result.output
    # Only the preflight's listing, before the merge: no upload, no create.
    assert fake.paths() == [("GET", "/api/tags")]
    assert not fake.blobs
    assert not fake.creates
    flat = " ".join(result.output.split())
    assert "Do not serve this GGUF" in flat
    assert "--quant q8_0" in flat
    assert "Not ready to serve" in flat
    assert "ollama run" not in flat
    assert (out / "relearned-tiny-f16.gguf").is_file(), "the files are kept for inspection"
    summary = json.loads((out / "export_summary.json").read_text(encoding="utf-8"))
    assert summary["ollama_created"] is False
    assert "not sent to Ollama" in summary["ollama_skipped"]
    assert summary["parity"]["restored_answers"] == 1


def test_adapter_mode_falls_back_for_gemma3(tmp_path, tiny_adapter, converter):
    result = CliRunner().invoke(cli, [
        "export", "--adapter", str(tiny_adapter), "--out", str(tmp_path / "out"), "--mode", "adapter",
        "--dry-run", "--offline", "--forget", str(FORGET),
    ])
    assert result.exit_code == 0, result.output
    assert "Ollama cannot load LoRA adapters for" in result.output
    assert "Gemma3ForCausalLM" in result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer random Llama with the tiny SentencePiece tokenizer: an architecture Ollama loads adapters for."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
                         pad_token_id=tiny_tokenizer.pad_token_id, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tiny_tokenizer.save_pretrained(str(folder))
    return folder


def test_adapter_mode_for_llama(httpserver, tmp_path_factory, tiny_llama_dir, converter):
    fake = FakeOllama(httpserver)
    adapter = make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("llama-adapter"),
                           target_modules=("q_proj", "v_proj"),
                           record={"base": str(tiny_llama_dir), "hf_path": str(tiny_llama_dir), "family": "chatml",
                                   "digest": None})
    result = export_tiny(tmp_path_factory, adapter, "f16", mode="adapter", ollama_create=True,
                         ollama_host=httpserver.url_for("/"), name="relearned-llama")
    assert result.plan.mode == "adapter"
    assert result.merged_dir is None
    assert result.adapter_gguf_path.is_file()
    modelfile = parse_modelfile(result.modelfile_path.read_text(encoding="utf-8"))
    assert modelfile.model == str(result.gguf_path.resolve())
    assert modelfile.adapter == str(result.adapter_gguf_path.resolve())
    assert fake.creates[0]["adapters"] == {result.adapter_gguf_path.name: sha256_digest(result.adapter_gguf_path)}
    assert fake.creates[0]["files"] == {result.gguf_path.name: sha256_digest(result.gguf_path)}
    assert result.gguf.add_bos is False  # chatml training fed no BOS
    assert result.parity.passed, result.parity.verdict()
