"""The serve stage: an HTTP API and a small web page answering with an unlearned model.

``run_serve(ServeConfig(model=...))`` serves until interrupted;
``create_app(config, backend=...)`` builds the FastAPI application for
embedding or testing.
"""

from __future__ import annotations

from .app import create_app
from .config import ServeConfig
from .server import ServeResult, ServeStartup, run_serve
from .source import ModelSource, resolve_model_source

__all__ = ["ModelSource", "ServeConfig", "ServeResult", "ServeStartup", "create_app", "resolve_model_source",
           "run_serve"]
