"""A reply cache keyed by (backend, model, model digest, prompt, options).

Local servers do not always return the same text for the same prompt, seed and
temperature 0, so a rerun of augment reads its replies from here and writes
byte-identical output. An interrupted run resumes without asking again. One
JSON file per reply under ``$RELEARN_HOME/cache/replies`` (or the folder
given), written atomically, so concurrent runs and threads can share it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from ..backends.base import GenerationBackend, GenerationRequest, GenerationResult, check_backend
from ..backends.schema import flatten_schema
from ..models import relearn_home
from ..runs import atomic_write_json

logger = logging.getLogger(__name__)

# Bumped when the key or the stored fields change, so old entries are not misread.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return relearn_home() / "cache" / "replies"


def cache_key(description: dict[str, Any], request: GenerationRequest) -> str:
    """Hash what determines a reply: backend, model, digest, messages, schema and sampling options.

    The timeout is left out, because it changes whether a reply arrives, not what it says.
    """
    material = {
        "format": CACHE_FORMAT,
        "backend": description.get("backend"),
        "model": description.get("model"),
        "digest": description.get("digest"),
        "messages": [dict(message) for message in request.messages],
        "schema": flatten_schema(request.schema) if request.schema is not None else None,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "seed": request.seed,
        "stop": list(request.stop),
    }
    encoded = json.dumps(material, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


class ReplyCache:
    """Stored replies, one file per key."""

    def __init__(self, folder: Optional[Path] = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict[str, Any]]:
        path = self._path(key)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring the unreadable cached reply %s (%s)", path, exc)
            return None
        if stored.get("format") != CACHE_FORMAT or not isinstance(stored.get("text"), str):
            return None
        return stored

    def put(self, key: str, result: GenerationResult) -> None:
        payload = {
            "format": CACHE_FORMAT,
            "text": result.text,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "finish_reason": result.finish_reason,
        }
        try:
            atomic_write_json(self._path(key), payload)
        except OSError as exc:
            logger.warning("could not store a reply in the cache %s (%s)", self.folder, exc)


class CachingBackend:
    """Wraps a backend: replies come from the cache when present (and reading is on), else from the backend.

    With ``read=False`` every request goes to the backend and its reply
    replaces the cached one.
    """

    def __init__(self, inner: GenerationBackend, cache: Optional[ReplyCache], read: bool = True):
        self.inner = inner
        self.cache = cache
        self.read = read
        self.name = inner.name
        self.model = inner.model

    def check(self) -> None:
        check_backend(self.inner)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.cache is None:
            return self.inner.generate(request)
        key = cache_key(self.inner.describe(), request)
        if self.read:
            stored = self.cache.get(key)
            if stored is not None:
                return GenerationResult(
                    text=stored["text"],
                    prompt_tokens=stored.get("prompt_tokens", 0),
                    completion_tokens=stored.get("completion_tokens", 0),
                    finish_reason=stored.get("finish_reason", "stop"),
                    cached=True,
                )
        result = self.inner.generate(request)
        self.cache.put(key, result)
        return result

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        return self.inner.stream(request)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
