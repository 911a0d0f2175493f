"""``run_serve``: load the models once, listen on the configured address and serve until stopped."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

import uvicorn

from ..errors import ConfigError
from .app import create_app
from .config import ServeConfig
from .source import ModelSource, load_backend, resolve_model_source

logger = logging.getLogger(__name__)


@dataclass
class ServeStartup:
    """Address and models of a server that has started accepting connections."""

    url: str
    host: str
    port: int
    model: ModelSource
    compare: Optional[ModelSource]
    #: Ask the server to finish the requests in progress and stop (safe to call from any thread).
    stop: Callable[[], None]


@dataclass
class ServeResult:
    """Summary returned when the server stops."""

    url: str
    model: str
    compare: Optional[str]
    requests: int
    errors: int


def run_serve(config: ServeConfig, on_ready: Optional[Callable[[ServeStartup], None]] = None,
              log_level: str = "info") -> ServeResult:
    """Serve ``config.model`` over HTTP until interrupted (Ctrl+C or SIGTERM).

    Model files are checked and the port is bound before the models load, so
    a wrong path or a busy port fails in a second. ``on_ready`` is called
    once the server accepts connections. It runs on the server's event loop,
    so it must return quickly and must not wait for a reply from the server.
    """
    config.validate()
    source = resolve_model_source(config.model, "--model")
    compare = resolve_model_source(config.compare, "--compare") if config.compare else None
    for chosen in (source, compare):
        if chosen is not None and chosen.note:
            logger.info("model: %s", chosen.note)
    listener = bind_listener(config.host, config.port)
    host, port = listener.getsockname()[:2]
    url = f"http://{_url_host(host)}:{port}"
    if not _is_loopback(config.host):
        logger.warning("listening on %s: other machines on the network can query the model", config.host)
    backends: list[Any] = []
    try:
        backends.append(load_backend(source, config.context_size, config.ollama_host))
        if compare is not None:
            backends.append(load_backend(compare, config.context_size, config.ollama_host))
        state = _serve_until_stopped(config, listener, backends, on_ready, log_level,
                                     ServeStartup(url=url, host=host, port=port, model=source, compare=compare,
                                                  stop=lambda: None))
    finally:
        listener.close()
        for backend in backends:
            backend.close()
    return ServeResult(url=url, model=source.label, compare=compare.label if compare else None,
                       requests=state.requests, errors=state.errors)


def _serve_until_stopped(config: ServeConfig, listener: socket.socket, backends: list[Any],
                         on_ready: Optional[Callable[[ServeStartup], None]], log_level: str,
                         startup: ServeStartup) -> Any:
    app = create_app(
        config, backend=backends[0], compare_backend=backends[1] if len(backends) > 1 else None,
        model_name=startup.model.label, compare_name=startup.compare.label if startup.compare else None,
    )
    server_config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10, lifespan="on")
    server = _Server(server_config, lambda: _announce(startup, on_ready))
    startup.stop = lambda: setattr(server, "should_exit", True)
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        # Uvicorn re-raises the Ctrl+C it handled once it has shut down; that is the normal way to stop.
        pass
    return app.state.serve


def _announce(startup: ServeStartup, on_ready: Optional[Callable[[ServeStartup], None]]) -> None:
    logger.info("serving %s at %s", startup.model.label, startup.url)
    if on_ready is not None:
        on_ready(startup)


class _Server(uvicorn.Server):
    """A uvicorn server that reports when it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]):
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: Optional[list[socket.socket]] = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self._on_started()


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port``, raising ConfigError with the next step when that fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} cannot be resolved ({exc.strerror}); use an address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        hint = "pass another --port (0 picks a free one)" if exc.errno == errno.EADDRINUSE else "check --host and --port"
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None
    listener.set_inheritable(True)
    return listener


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
