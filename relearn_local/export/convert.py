"""llama.cpp's converter: obtained once for the installed llama-cpp-python, and run as a subprocess.

The converter is pinned to the llama.cpp that the installed llama-cpp-python
wraps, so the GGUF it writes is one that llama-cpp-python (used for the
parity check) can load. It is taken from that version's source archive,
which vendors llama.cpp under ``vendor/llama.cpp``: from an archive the user
names, from ``<venv>/sdist/`` where the Makefile keeps it, or downloaded
once with pip. Only ``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``,
``conversion/`` and ``gguf-py/`` are extracted, into
``$RELEARN_HOME/llama.cpp/<version>/``. A llama.cpp checkout given with
``--llama-cpp`` is used as it is.

The converter runs with its own ``gguf-py`` first on PYTHONPATH, because it
may need a newer ``gguf`` than the installed package.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import ExportError
from ..models import relearn_home
from ..runs import atomic_write_json, sha256_file, utc_now

logger = logging.getLogger(__name__)

PACKAGE = "llama_cpp_python"
VENDOR_PREFIX = "vendor/llama.cpp/"
EXTRACTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
MARKER_FILE = "relearn-converter.json"
# Modules the converter imports at start-up; all are relearn-local dependencies.
CONVERTER_IMPORTS = ("torch", "transformers", "numpy", "sentencepiece", "yaml", "safetensors")
PIP_DOWNLOAD_TIMEOUT = 600


@dataclass
class Converter:
    """A usable copy of llama.cpp's conversion scripts."""

    root: Path
    version: str
    source: str

    @property
    def script(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def lora_script(self) -> Path:
        return self.root / "convert_lora_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    def describe(self) -> dict[str, str]:
        return {"root": str(self.root), "version": self.version, "source": self.source}


def installed_llama_cpp_version() -> Optional[str]:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def converter_cache_dir(version: str) -> Path:
    return relearn_home() / "llama.cpp" / version


def sdist_name(version: str) -> str:
    return f"{PACKAGE}-{version}.tar.gz"


def sdist_candidates(version: str, explicit: Optional[Path]) -> list[Path]:
    """Places a source archive of ``version`` may already be, in the order they are tried."""
    candidates = []
    if explicit is not None:
        candidates.append(Path(explicit).expanduser())
    candidates.append(Path(sys.prefix) / "sdist" / sdist_name(version))
    candidates.append(relearn_home() / "llama.cpp" / "downloads" / sdist_name(version))
    return candidates


def locate_converter(llama_cpp: Optional[Path] = None, sdist: Optional[Path] = None, offline: bool = False,
                     fetch: bool = True, on_download: Optional[Callable[[str], None]] = None) -> Converter:
    """Find the converter, extracting or downloading it once when needed; raise ExportError naming the fix.

    With ``fetch`` False nothing is extracted or downloaded. The result then
    only describes where the converter would come from (for dry runs), and
    ``Converter.root`` may not exist yet.
    """
    if llama_cpp is not None:
        return _checkout_converter(Path(llama_cpp).expanduser())
    _check_converter_imports()
    version = installed_llama_cpp_version()
    if version is None:
        raise ExportError(
            "llama-cpp-python is not installed, so the llama.cpp converter version cannot be pinned; "
            "install it (make setup) or pass --llama-cpp DIR with a llama.cpp checkout"
        )
    cache = converter_cache_dir(version)
    if _cache_is_complete(cache, version):
        return Converter(cache, version, json.loads((cache / MARKER_FILE).read_text(encoding="utf-8"))["source"])
    if sdist is not None and not Path(sdist).expanduser().is_file():
        raise ExportError(f"--llama-cpp-sdist {sdist}: no such file; pass the llama-cpp-python {version} .tar.gz")
    for candidate in sdist_candidates(version, sdist):
        if candidate.is_file():
            if not fetch:
                return Converter(cache, version, f"to be extracted from {candidate}")
            return _extract(candidate, cache, version)
    if offline:
        raise ExportError(_missing_message(version, "downloading is disabled (--offline)"))
    if not fetch:
        return Converter(cache, version, f"to be downloaded: pip download llama-cpp-python=={version}")
    archive = _download_sdist(version, on_download)
    return _extract(archive, cache, version)


def _missing_message(version: str, reason: str) -> str:
    places = ", ".join(str(path) for path in sdist_candidates(version, None)[:1])
    return (
        f"the llama.cpp converter for llama-cpp-python {version} is missing: no source archive "
        f"{sdist_name(version)} in {places} and {reason}. Fix: run `make setup` (it keeps the archive in "
        f".venv/sdist/), pass --llama-cpp-sdist FILE or --llama-cpp DIR (a llama.cpp checkout), "
        "or allow the one-time download"
    )


def _check_converter_imports() -> None:
    from importlib.util import find_spec

    missing = [name for name in CONVERTER_IMPORTS if find_spec(name) is None]
    if missing:
        raise ExportError(
            f"llama.cpp's converter needs the Python package(s) {', '.join(missing)}; install them with pip"
        )


def _checkout_converter(root: Path) -> Converter:
    if not (root / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"--llama-cpp {root}: no convert_hf_to_gguf.py there; pass the root of a llama.cpp checkout")
    if not (root / "gguf-py" / "gguf").is_dir():
        raise ExportError(f"--llama-cpp {root}: no gguf-py/gguf folder; pass the root of a llama.cpp checkout")
    _check_converter_imports()
    return Converter(root.resolve(), "checkout", f"llama.cpp checkout {root}")


def _cache_is_complete(cache: Path, version: str) -> bool:
    marker = cache / MARKER_FILE
    if not marker.exists():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("version") == version and (cache / "convert_hf_to_gguf.py").is_file()


def _extract(archive: Path, cache: Path, version: str) -> Converter:
    """Extract the converter files from a source archive into ``cache`` (written whole, then renamed)."""
    logger.info("extracting llama.cpp's converter from %s into %s", archive, cache)
    staging = cache.with_name(cache.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        count = _extract_members(archive, staging)
    except (OSError, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"{archive}: is not a readable llama-cpp-python source archive ({exc})") from exc
    if not (staging / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(
            f"{archive}: contains no vendor/llama.cpp/convert_hf_to_gguf.py; pass llama-cpp-python's source archive"
        )

    atomic_write_json(staging / MARKER_FILE, {
        "version": version, "source": f"llama-cpp-python {version} source archive",
        "archive": str(archive), "archive_sha256": sha256_file(archive), "files": count, "extracted": utc_now(),
    })
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(staging, cache)
    return Converter(cache, version, f"llama-cpp-python {version} source archive")


def _extract_members(archive: Path, staging: Path) -> int:
    """Copy the converter's regular files out of the archive, never writing outside ``staging``."""
    count = 0
    root = staging.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            relative = _vendored_path(member.name)
            if relative is None or not member.isfile():
                continue
            target = (staging / relative).resolve()
            if root not in target.parents:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, target.open("wb") as destination:
                shutil.copyfileobj(source, destination)
            count += 1
    return count


def _vendored_path(name: str) -> Optional[str]:
    _, _, inside = name.partition("/")
    if not inside.startswith(VENDOR_PREFIX):
        return None
    relative = inside[len(VENDOR_PREFIX):]
    if ".." in Path(relative).parts:
        return None
    if relative in EXTRACTED or any(relative.startswith(prefix) for prefix in EXTRACTED if prefix.endswith("/")):
        return relative
    return None


def _download_sdist(version: str, on_download: Optional[Callable[[str], None]]) -> Path:
    """Download llama-cpp-python's source archive from the package index with pip (about 75 MB)."""
    target = relearn_home() / "llama.cpp" / "downloads"
    target.mkdir(parents=True, exist_ok=True)
    if on_download is not None:
        on_download(f"downloading llama-cpp-python {version} source archive for its converter (once)")
    logger.info("downloading llama-cpp-python %s source archive into %s", version, target)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--timeout", "30", "--retries", "1", "-d", str(target), f"llama-cpp-python=={version}"]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=PIP_DOWNLOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ExportError(_missing_message(version, f"pip download timed out after {PIP_DOWNLOAD_TIMEOUT} s")) from None
    archive = target / sdist_name(version)
    if completed.returncode != 0 or not archive.is_file():
        last = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(_missing_message(version, f"pip download failed ({last[0]})"))
    return archive


def converter_environment(converter: Converter) -> dict[str, str]:
    """Environment for the converter: its gguf-py first, and no Hugging Face Hub access."""
    environment = dict(os.environ)
    existing = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = str(converter.gguf_py) + (os.pathsep + existing if existing else "")
    environment["HF_HUB_OFFLINE"] = "1"
    environment["TRANSFORMERS_OFFLINE"] = "1"
    environment.pop("NO_LOCAL_GGUF", None)
    return environment


def run_converter(converter: Converter, arguments: list[Union[str, Path]], log_path: Path,
                  on_line: Optional[Callable[[str], None]] = None, script: Optional[Path] = None) -> None:
    """Run a converter script with ``arguments`` and log its output to ``log_path``.

    Path arguments are made absolute, because the script runs in a scratch folder.
    Raises ExportError when the script fails.
    """
    command = [sys.executable, str(script or converter.script)]
    command += [os.path.abspath(item) if isinstance(item, Path) else item for item in arguments]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=8)
    with log_path.open("a", encoding="utf-8") as log, tempfile.TemporaryDirectory() as scratch:
        log.write("$ " + " ".join(command) + "\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=converter_environment(converter), cwd=scratch, bufsize=1)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                stripped = line.strip()
                if stripped:
                    tail.append(stripped[-300:])
                    if on_line is not None:
                        on_line(stripped)
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
    if code != 0:
        raise ExportError(
            f"llama.cpp's converter failed (exit code {code}): {tail[-1] if tail else 'no output'}; "
            f"see {log_path}"
        )
