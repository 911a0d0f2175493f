"""The FastAPI application: /unlearn/, the compare endpoints, /health, the page, and error replies.

Generation always goes through a ModelWorker, so the model is loaded once,
used by one thread at a time, and protected by the queue limit.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.base import (BackendTimeoutError, BackendUnavailableError, ContextOverflowError, GenerationBackend,
                             GenerationRequest, GenerationResult)
from ..errors import BackendError
from .config import ServeConfig
from .limits import BodySizeLimitMiddleware, ModelWorker, ServeLimitError, error_body
from .schemas import AnswerResponse, CompareResponse, ModelAnswer, QuestionRequest

logger = logging.getLogger(__name__)


class ServeHTTPError(Exception):
    """An error reply with its status, message and the request field it concerns."""

    def __init__(self, status_code: int, message: str, error_type: str, param: Optional[str] = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.param = param


@dataclass
class ServedModel:
    """A model that the app generates with, with its worker, display label and provenance."""

    label: str
    worker: ModelWorker
    description: dict[str, Any]


@dataclass
class ServeState:
    config: ServeConfig
    unlearned: ServedModel
    original: Optional[ServedModel]
    owned_backends: list[GenerationBackend] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0


def create_app(config: ServeConfig, backend: Optional[GenerationBackend] = None,
               compare_backend: Optional[GenerationBackend] = None, model_name: Optional[str] = None,
               compare_name: Optional[str] = None) -> FastAPI:
    """Build the application for ``config``.

    The caller closes a backend that it passes in. A backend that the app
    loads from ``config.model`` or ``config.compare`` is closed when the app
    shuts down. ``model_name`` and ``compare_name`` are the names shown
    on the page and in OpenAI replies (default: derived from the config).
    """
    owned: list[GenerationBackend] = []
    if backend is None:
        backend = _load(config.model, "--model", config)
        owned.append(backend)
    if compare_backend is None and config.compare:
        compare_backend = _load(config.compare, "--compare", config)
        owned.append(compare_backend)
    state = ServeState(
        config=config,
        unlearned=_served(backend, model_name or model_label(config.model), "unlearned", config),
        original=(_served(compare_backend, compare_name or model_label(config.compare), "original", config)
                  if compare_backend else None),
        owned_backends=owned,
    )
    app = FastAPI(title="relearn-local", summary="Answers from an unlearned model", lifespan=_lifespan(state))
    app.state.serve = state
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    _add_error_handlers(app, state)
    _add_question_routes(app, state)
    _add_info_routes(app, state)
    from .openai_api import add_openai_routes

    add_openai_routes(app, state)
    return app


def model_label(spec: Optional[str]) -> str:
    """Return the name shown for a model: ``ollama:NAME`` as given, otherwise the file or folder name."""
    if not spec:
        return ""
    if spec.startswith("ollama:"):
        return spec
    return Path(spec).name or spec


def _load(spec: str, option: str, config: ServeConfig) -> GenerationBackend:
    from .source import load_backend, resolve_model_source

    source = resolve_model_source(spec, option)
    return load_backend(source, config.context_size, config.ollama_host)


def _served(backend: GenerationBackend, label: str, role: str, config: ServeConfig) -> ServedModel:
    try:
        description = dict(backend.describe())
    except Exception as exc:  # provenance is informational; a backend that cannot describe itself still serves
        logger.warning("could not describe the %s model %s: %s", role, label, exc)
        description = {}
    worker = ModelWorker(backend, role, config.max_pending, config.queue_timeout)
    return ServedModel(label=label or str(getattr(backend, "model", role)), worker=worker, description=description)


def _lifespan(state: ServeState):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        original = f", original model {state.original.label}" if state.original else ""
        logger.info("serve started: model %s%s", state.unlearned.label, original)
        try:
            yield
        finally:
            for served in (state.unlearned, state.original):
                if served is not None:
                    served.worker.close()
            for backend in state.owned_backends:
                try:
                    backend.close()
                except Exception as exc:  # shutting down anyway; report and go on closing the rest
                    logger.error("closing backend %s failed: %s", getattr(backend, "model", "?"), exc)
            logger.info("serve stopped: %d requests, %d failed", state.requests, state.errors)

    return lifespan


def _add_error_handlers(app: FastAPI, state: ServeState) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_errors(exc.errors())
        logger.warning("rejected %s %s: %s", request.method, request.url.path, message)
        return JSONResponse(status_code=422, content=error_body(message, "invalid_request_error", param))

    @app.exception_handler(ServeLimitError)
    async def limit_reached(request: Request, exc: ServeLimitError) -> JSONResponse:
        logger.warning("rejected %s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(status_code=exc.status_code, content=error_body(exc.message, exc.error_type))

    @app.exception_handler(ServeHTTPError)
    async def serve_error(request: Request, exc: ServeHTTPError) -> JSONResponse:
        if exc.status_code >= 500:
            state.errors += 1
        logger.warning("%s %s failed with %d: %s", request.method, request.url.path, exc.status_code, exc.message)
        return JSONResponse(status_code=exc.status_code, content=error_body(exc.message, exc.error_type, exc.param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=error_body(str(exc.detail), "invalid_request_error"),
                            headers=getattr(exc, "headers", None))


def describe_validation_errors(errors: Sequence[dict[str, Any]]) -> tuple[str, Optional[str]]:
    """Summarize pydantic errors in one line naming each field; return it with the first field's name.

    The rejected values are left out, since a value can be a megabyte of text.
    """
    parts = []
    first_param: Optional[str] = None
    for error in errors:
        location = [str(item) for item in error.get("loc", ()) if item != "body"]
        if error.get("type") == "json_invalid":
            position = f" at character {location[0]}" if location else ""
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            parts.append(f"the body is not valid JSON{position} ({reason})")
            continue
        name = ".".join(location) or "body"
        first_param = first_param or name
        if error.get("type") == "missing":
            parts.append(f"field '{name}' is required")
        elif error.get("type") == "extra_forbidden":
            parts.append(f"field '{name}' is not allowed")
        else:
            parts.append(f"field '{name}': {error.get('msg', 'invalid value')}")
    return "invalid request: " + "; ".join(parts), first_param


def check_question_length(text: str, config: ServeConfig, param: str = "question") -> None:
    if not text.strip():
        raise ServeHTTPError(422, f"invalid request: field '{param}' is empty", "invalid_request_error", param)
    if len(text) > config.max_question_chars:
        raise ServeHTTPError(
            422,
            f"invalid request: field '{param}' is {len(text)} characters; the limit is "
            f"{config.max_question_chars} (--max-question-chars)",
            "invalid_request_error",
            param,
        )


def output_token_limit(config: ServeConfig, *requested: Optional[int]) -> int:
    """Return the first requested output token count, lowered to the server's limit."""
    for value in requested:
        if value is not None:
            return min(value, config.max_tokens)
    return config.max_tokens


async def generate_with(served: ServedModel, request: GenerationRequest, state: ServeState) -> GenerationResult:
    """Generate on a model's worker, turning backend failures into error replies."""
    state.requests += 1
    with served.worker.admit():
        try:
            return await served.worker.generate(request)
        except (ServeLimitError, ServeHTTPError):
            raise
        except Exception as exc:
            raise failure_reply(exc, served) from exc


def failure_reply(exc: Exception, served: ServedModel) -> ServeHTTPError:
    """Log a generation failure and return the error reply for it."""
    role, label = served.worker.label, served.label
    if isinstance(exc, ContextOverflowError):
        logger.warning("the %s model %s rejected a request: %s", role, label, exc)
        return ServeHTTPError(400, f"the request does not fit the model: {exc}; send a shorter question or "
                                   "lower max_tokens", "context_length_exceeded", "question")
    if isinstance(exc, BackendTimeoutError):
        logger.error("the %s model %s timed out: %s", role, label, exc)
        return ServeHTTPError(504, f"the model timed out: {exc}", "timeout")
    if isinstance(exc, BackendUnavailableError):
        logger.error("the %s model %s is unavailable: %s", role, label, exc)
        return ServeHTTPError(503, f"the model backend is unavailable: {exc}", "backend_unavailable")
    if isinstance(exc, BackendError):
        logger.error("the %s model %s failed: %s", role, label, exc)
        return ServeHTTPError(502, f"the model backend failed: {exc}", "backend_error")
    logger.error("generation with the %s model %s failed", role, label, exc_info=exc)
    return ServeHTTPError(500, f"generation failed ({type(exc).__name__}); see the server log", "server_error")


def question_request(body: QuestionRequest, config: ServeConfig) -> GenerationRequest:
    check_question_length(body.question, config)
    messages = []
    if config.system_prompt:
        messages.append({"role": "system", "content": config.system_prompt})
    messages.append({"role": "user", "content": body.question})
    return GenerationRequest(
        messages=messages,
        max_tokens=output_token_limit(config, body.max_tokens),
        temperature=config.temperature,
        seed=config.seed,
        timeout=config.request_timeout,
    )


def _add_question_routes(app: FastAPI, state: ServeState) -> None:
    @app.post("/unlearn/", response_model=AnswerResponse, summary="Answer a question with the served model")
    async def unlearn(body: QuestionRequest) -> AnswerResponse:
        result = await generate_with(state.unlearned, question_request(body, state.config), state)
        return AnswerResponse(response=result.text)

    @app.post("/original/", response_model=AnswerResponse, summary="Answer a question with the --compare model")
    async def original(body: QuestionRequest) -> AnswerResponse:
        compare = _require_compare(state)
        result = await generate_with(compare, question_request(body, state.config), state)
        return AnswerResponse(response=result.text)

    @app.post("/compare/", response_model=CompareResponse, summary="Answer with both models, one after the other")
    async def compare(body: QuestionRequest) -> CompareResponse:
        compare_model = _require_compare(state)
        request = question_request(body, state.config)
        unlearned = await generate_with(state.unlearned, request, state)
        original = await generate_with(compare_model, request, state)
        return CompareResponse(
            question=body.question,
            unlearned=ModelAnswer(model=state.unlearned.label, response=unlearned.text),
            original=ModelAnswer(model=compare_model.label, response=original.text),
        )


def _require_compare(state: ServeState) -> ServedModel:
    if state.original is None:
        raise ServeHTTPError(
            404, "no original model to compare with; start the server with --compare BASE_MODEL", "not_found"
        )
    return state.original


def _add_info_routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/health", summary="Server status, models and limits")
    async def health() -> dict[str, Any]:
        config = state.config
        return {
            "status": "ok",
            "model": state.unlearned.label,
            "backend": state.unlearned.description,
            "compare": (
                {"model": state.original.label, "backend": state.original.description} if state.original else None
            ),
            "limits": {
                "max_question_chars": config.max_question_chars,
                "max_tokens": config.max_tokens,
                "max_body_bytes": config.max_body_bytes,
                "max_pending": config.max_pending,
            },
            "pending": {
                "unlearned": state.unlearned.worker.pending,
                "original": state.original.worker.pending if state.original else 0,
            },
            "requests": state.requests,
            "errors": state.errors,
            "uptime_seconds": round(time.time() - state.started, 1),
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        from .page import PAGE_HTML

        return HTMLResponse(PAGE_HTML)
