"""Missing tools: without a converter or quantizer the export fails before merging and names the fix; f16 needs no quantizer.

Also covers where the converter comes from: a local source archive
(extracting only the converter files, never outside the cache), a llama.cpp
checkout, or a download that fails on an unreachable package index.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from export_support import FORGET, converter, export_base_dir, export_tiny, tiny_adapter  # noqa: F401
from relearn_local.cli import cli
from relearn_local.errors import ExportError
from relearn_local.export.convert import (MARKER_FILE, installed_llama_cpp_version, locate_converter, sdist_name)


def merge_must_not_run(*args, **kwargs):
    raise AssertionError("the merge started although a tool is missing")


@pytest.fixture
def no_local_converter(tmp_path, monkeypatch):
    """A machine with no cached converter and no source archive in the virtual environment."""
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv-without-sdist"))


def run_export_cli(adapter: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["export", "--adapter", str(adapter), "--out", str(out),
                                    "--forget", str(FORGET), *extra])


def test_missing_converter_fails_before_merge(tmp_path, tiny_adapter, no_local_converter, monkeypatch):
    monkeypatch.setattr("relearn_local.export.stage.merge_adapter", merge_must_not_run)
    result = run_export_cli(tiny_adapter, tmp_path / "out", "--offline")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "the llama.cpp converter for llama-cpp-python" in lines[0]
    assert "make setup" in lines[0]
    assert "--llama-cpp" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_converter_with_f16_fails_too(tmp_path, tiny_adapter, no_local_converter, monkeypatch):
    monkeypatch.setattr("relearn_local.export.stage.merge_adapter", merge_must_not_run)
    result = run_export_cli(tiny_adapter, tmp_path / "out", "--offline", "--quant", "f16")
    assert result.exit_code == 2
    assert "converter" in result.output


def test_failed_download_names_the_fix(tmp_path, tiny_adapter, no_local_converter, monkeypatch):
    """pip download against an unreachable index (a closed loopback port) fails fast with the fix."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setattr("relearn_local.export.stage.merge_adapter", merge_must_not_run)
    result = run_export_cli(tiny_adapter, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "pip download failed" in result.output
    assert "--llama-cpp-sdist" in result.output


def test_missing_quantizer_fails_before_merge(tmp_path, tiny_adapter, converter, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setattr("relearn_local.export.stage.merge_adapter", merge_must_not_run)
    result = run_export_cli(tiny_adapter, tmp_path / "out", "--offline", "--quant", "q4_k_m")
    assert result.exit_code == 2, result.output
    assert "cannot quantize to q4_k_m: llama-cpp-python cannot be imported" in result.output
    assert "--quant f16" in result.output
    assert not (tmp_path / "out").exists()


def test_f16_works_without_quantizer(tmp_path_factory, tiny_adapter, converter, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    result = export_tiny(tmp_path_factory, tiny_adapter, "f16", parity_questions=1)
    assert result.gguf_path.is_file()
    assert result.gguf.file_type == 1  # LLAMA_FTYPE_MOSTLY_F16
    assert result.modelfile_path.is_file()
    assert result.parity.skipped is not None and "llama-cpp-python cannot be imported" in result.parity.skipped


# Where the converter comes from -----------------------------------------------------------------------------------


def make_sdist(path: Path, version: str, extra: dict[str, bytes] | None = None) -> Path:
    """Write a small stand-in for llama-cpp-python's source archive."""
    files = {
        f"llama_cpp_python-{version}/vendor/llama.cpp/convert_hf_to_gguf.py": b"# converter\n",
        f"llama_cpp_python-{version}/vendor/llama.cpp/convert_lora_to_gguf.py": b"# lora converter\n",
        f"llama_cpp_python-{version}/vendor/llama.cpp/conversion/__init__.py": b"",
        f"llama_cpp_python-{version}/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
        f"llama_cpp_python-{version}/vendor/llama.cpp/src/llama.cpp": b"// not needed by the converter\n",
        f"llama_cpp_python-{version}/llama_cpp/__init__.py": b"",
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extracts_only_converter_files(tmp_path, monkeypatch):
    version = installed_llama_cpp_version()
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path / "home"))
    escape = f"llama_cpp_python-{version}/vendor/llama.cpp/conversion/../../../../evil.py"
    archive = make_sdist(tmp_path / sdist_name(version), version, {escape: b"import os\n"})
    found = locate_converter(sdist=archive, offline=True)
    extracted = sorted(str(path.relative_to(found.root)) for path in found.root.rglob("*") if path.is_file())
    assert extracted == sorted(["convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/__init__.py",
                                "gguf-py/gguf/__init__.py", MARKER_FILE])
    assert not (tmp_path / "evil.py").exists()
    assert found.version == version
    again = locate_converter(offline=True)  # now cached
    assert again.root == found.root


def test_archive_without_converter(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path / "home"))
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ExportError, match="contains no vendor/llama.cpp/convert_hf_to_gguf.py"):
        locate_converter(sdist=archive, offline=True)


def test_checkout_must_hold_converter(tmp_path):
    with pytest.raises(ExportError, match="no convert_hf_to_gguf.py"):
        locate_converter(llama_cpp=tmp_path)
    (tmp_path / "convert_hf_to_gguf.py").write_text("# converter\n")
    with pytest.raises(ExportError, match="no gguf-py/gguf folder"):
        locate_converter(llama_cpp=tmp_path)
    (tmp_path / "gguf-py" / "gguf").mkdir(parents=True)
    assert locate_converter(llama_cpp=tmp_path).root == tmp_path.resolve()


def test_dry_run_reports_a_pending_download(tmp_path, tiny_adapter, no_local_converter):
    result = run_export_cli(tiny_adapter, tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "to be downloaded: pip download llama-cpp-python==" in result.output
    assert not (tmp_path / "out").exists()
