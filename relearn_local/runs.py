"""Run folders: resolved config, manifest, log file, atomic writes and completion state.

Every stage writes into its ``--out`` folder:

- ``config.yaml``: the resolved configuration (defaults < config file < flags)
- ``manifest.json``: package versions, base model and its hash, SHA-256 of every input file
- ``run.log``: the log of the run
- ``state.json``: ``{"stage": ..., "status": "running" | "complete" | "failed"}``

A folder whose state is ``complete`` is not overwritten without ``force``;
a ``running`` or ``failed`` folder of the same stage is resumed where the
stage supports it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import __version__
from .errors import RunFolderError

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "run.log"

STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"

# Packages whose versions go into every manifest, when installed.
MANIFEST_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "gguf",
    "llama_cpp_python",
    "ollama",
    "unsloth",
    "bitsandbytes",
    "sentence-transformers",
    "nltk",
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while block := stream.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """Hash a file, or every file of a folder in sorted relative-path order."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode("utf-8") + b"\0")
        digest.update(sha256_file(child).encode("ascii"))
    return digest.hexdigest()


def package_versions(names: Iterable[str] = MANIFEST_PACKAGES) -> dict[str, str]:
    versions = {"relearn-local": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """The output folder of one stage run."""

    def __init__(self, path: Path | str, stage: str):
        self.path = Path(path)
        self.stage = stage
        self._log_handler: logging.Handler | None = None

    def file(self, name: str) -> Path:
        return self.path / name

    def read_state(self) -> dict[str, Any] | None:
        state_path = self.file(STATE_FILE)
        if not state_path.exists():
            return None
        try:
            return json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunFolderError(
                f"{state_path}: is unreadable ({exc}); remove it or choose another --out"
            ) from exc

    @property
    def is_complete(self) -> bool:
        state = self.read_state()
        return bool(state and state.get("status") == STATUS_COMPLETE)

    def check(self, force: bool = False, resumable: bool = True) -> dict[str, Any] | None:
        """Raise RunFolderError where ``prepare`` would, without changing anything; return the folder's state.

        Raises when the folder holds a finished run (unless ``force``), a run
        of another stage, an unfinished run that cannot be resumed (unless
        ``force``), or unrelated files (unless ``force``).
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--out {self.path} is a file; choose a folder")
        state = self.read_state() if self.path.exists() else None
        if state is not None:
            if state.get("stage") != self.stage:
                raise RunFolderError(
                    f"{self.path} holds a {state.get('stage')!r} run, not {self.stage!r}; choose another --out"
                )
            if state.get("status") == STATUS_COMPLETE and not force:
                raise RunFolderError(
                    f"{self.path} holds the finished output of 'relearn-local {self.stage}'; "
                    "pass --force to overwrite it or choose another --out"
                )
            if not force and not resumable:
                raise RunFolderError(
                    f"{self.path} contains an unfinished {self.stage} run that cannot be resumed; "
                    "pass --force to start over"
                )
        elif self.path.exists() and any(self.path.iterdir()) and not force:
            raise RunFolderError(
                f"{self.path} is not empty and contains no relearn-local run; choose another --out or pass --force"
            )
        return state

    def prepare(self, force: bool = False, resumable: bool = True) -> bool:
        """Create or reopen the folder; return True when an unfinished run of this stage is resumed.

        Raises RunFolderError in the cases ``check`` lists.
        """
        state = self.check(force, resumable)
        resuming = False
        if state is not None:
            if force:
                self._clear()
            else:
                resuming = resumable
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_state(STATUS_RUNNING)
        return resuming

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def write_state(self, status: str, **extra: Any) -> None:
        state = {"stage": self.stage, "status": status, "updated": utc_now(), **extra}
        atomic_write_json(self.file(STATE_FILE), state)

    def mark_complete(self, **extra: Any) -> None:
        self.write_state(STATUS_COMPLETE, **extra)

    def mark_failed(self, reason: str) -> None:
        self.write_state(STATUS_FAILED, reason=reason)

    def write_config(self, config: Any) -> None:
        from .config import config_to_yaml

        atomic_write_text(self.file(CONFIG_FILE), config_to_yaml(config))

    def write_manifest(
        self,
        inputs: Mapping[str, Path | str | None] | None = None,
        base_model: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write manifest.json with versions, the base model and the SHA-256 of each input."""
        hashed: dict[str, Any] = {}
        for name, value in (inputs or {}).items():
            if value is None:
                continue
            input_path = Path(value)
            hashed[name] = {"path": str(input_path.resolve()), "sha256": sha256_path(input_path)}
        manifest = {
            "stage": self.stage,
            "created": utc_now(),
            "command": sys.argv,
            "platform": platform.platform(),
            "packages": package_versions(),
            "base_model": dict(base_model or {}),
            "inputs": hashed,
            **dict(extra or {}),
        }
        atomic_write_json(self.file(MANIFEST_FILE), manifest)
        return manifest

    def attach_log(self, level: int = logging.INFO) -> None:
        """Copy the package's log records into run.log until detach_log()."""
        handler = logging.FileHandler(self.file(LOG_FILE), encoding="utf-8")
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger = logging.getLogger("relearn_local")
        package_logger.addHandler(handler)
        if package_logger.level == logging.NOTSET or package_logger.level > level:
            package_logger.setLevel(level)
        self._log_handler = handler

    def detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("relearn_local").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not self.is_complete:
            interrupted = isinstance(exc, KeyboardInterrupt)
            reason = "interrupted" if interrupted else f"{type(exc).__name__}: {exc}"
            self._log_failure(reason, None if interrupted else (exc_type, exc, tb))
            try:
                self.mark_failed(reason)
            except OSError:
                logger.exception("could not record the failure in %s", self.file(STATE_FILE))
        self.detach_log()

    def _log_failure(self, reason: str, exc_info: Any) -> None:
        """Write the failure, with its traceback, to run.log only.

        The console already shows the one-line error, so the record bypasses
        the console handlers.
        """
        if self._log_handler is None:
            return
        record = logging.LogRecord(logger.name, logging.ERROR, __file__, 0, "relearn-local %s failed: %s",
                                   (self.stage, reason), exc_info)
        self._log_handler.handle(record)
