"""``--ollama-create``: upload the GGUF blobs and create the model through the official ``ollama`` client.

The requests are the ones ``ollama create -f Modelfile`` sends: one
``POST /api/blobs/sha256:<digest>`` per file, then ``POST /api/create`` with
the file names mapped to their digests, the TEMPLATE, the parameters and the
system prompt. Ollama can answer "success" to a create and still not serve
the model (for example when an adapter does not fit the base), so success
is reported only after ``GET /api/tags`` lists the model.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import BackendError, ExportError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "http://127.0.0.1:11434"


@dataclass
class OllamaCreateResult:
    host: str
    model: str
    listed_as: str
    digests: dict[str, str]
    status: str


def ollama_host(configured: Optional[str]) -> str:
    """Return the Ollama address: the option, else $OLLAMA_HOST, else the local default."""
    return configured or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST


def listed_name(name: str) -> str:
    """Return the name Ollama lists a model under (``:latest`` is added when no tag is given)."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


@contextmanager
def _ollama_client(host: str, timeout: float, action: str, timeout_hint: str) -> Iterator[Any]:
    """Yield an ``ollama.Client`` for ``host`` and turn its failures into BackendError naming ``action``."""
    import httpx
    import ollama

    client = ollama.Client(host=host, timeout=timeout)
    try:
        yield client
    except ollama.ResponseError as exc:
        raise BackendError(f"Ollama at {host} rejected {action}: {exc.error} (HTTP {exc.status_code})") from None
    except ConnectionError:
        raise BackendError(
            f"cannot reach Ollama at {host}; start Ollama (ollama serve) or set OLLAMA_HOST / --ollama-host, "
            "or drop --ollama-create"
        ) from None
    except httpx.TimeoutException:
        raise BackendError(f"Ollama at {host} did not respond within {timeout:g} s; {timeout_hint}") from None
    finally:
        client.close()


def check_ollama_reachable(host: str, timeout: float = 5.0) -> None:
    """Raise BackendError unless Ollama at ``host`` lists its models within ``timeout`` seconds.

    Run before the merge, so that an unreachable server fails the export in
    seconds instead of after the merge, conversion and parity steps.
    """
    with _ollama_client(host, timeout, "listing its models", "check the server") as client:
        client.list()


def create_ollama_model(host: str, name: str, model_path: Path, template: str, parameters: dict[str, Any],
                        system: Optional[str] = None, adapter_path: Optional[Path] = None, timeout: float = 600.0,
                        on_step: Optional[Callable[[str], None]] = None) -> OllamaCreateResult:
    """Upload the files, create the model and confirm Ollama lists it; raise BackendError or ExportError."""
    with _ollama_client(host, timeout, f"creating {name}", "raise --ollama-timeout or check the server") as client:
        digests = {}
        for path in (model_path, adapter_path):
            if path is not None:
                if on_step is not None:
                    on_step(f"uploading {path.name} to Ollama at {host}")
                digests[path.name] = client.create_blob(path)
        if on_step is not None:
            on_step(f"creating {name}")
        response = client.create(
            model=name,
            files={model_path.name: digests[model_path.name]},
            adapters={adapter_path.name: digests[adapter_path.name]} if adapter_path is not None else None,
            template=template,
            parameters=parameters,
            system=system,
            stream=False,
        )
        status = str(getattr(response, "status", "") or "")
        if on_step is not None:
            on_step(f"checking that Ollama lists {name}")
        listed = [str(getattr(entry, "model", "")) for entry in client.list().models]
    expected = listed_name(name)
    if status != "success":
        raise ExportError(f"Ollama responded {status!r} instead of 'success' when creating {name}")
    if expected not in listed and name not in listed:
        raise ExportError(
            f"Ollama reported success for {name} but does not list it (it lists {len(listed)} models); "
            f"the model was not created. Check the Ollama server log, then retry with: ollama create {name} -f Modelfile"
        )
    logger.info("Ollama at %s lists %s", host, expected)
    return OllamaCreateResult(host, name, expected, digests, status)
