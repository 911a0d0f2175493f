"""``relearn-local serve``: answer questions with an unlearned model over HTTP and on a small web page."""

from __future__ import annotations

import logging
from typing import Any, Optional

import click

from .common import config_option, given_options, is_quiet

# click parameter name -> ServeConfig field
_CONFIG_FIELDS = [
    "model", "compare", "host", "port", "max_question_chars", "max_tokens", "max_body_bytes", "max_pending",
    "queue_timeout", "temperature", "system_prompt", "context_size", "ollama_host", "request_timeout",
]


@click.command(
    "serve",
    epilog="""
\b
Examples:
  relearn-local serve --model runs/export/relearn-q4_k_m.gguf
  relearn-local serve --model runs/export --compare gemma3-270m --port 8080
  relearn-local serve --model ollama:relearn-demo --ollama-host http://127.0.0.1:11434
  curl -s http://127.0.0.1:8000/unlearn/ -H 'Content-Type: application/json' -d '{"question": "Who is Mara?"}'
""",
)
@click.option("--model", default=None, metavar="MODEL",
              help="Model to serve: a GGUF file, an export run folder containing one .gguf, "
                   "'gemma3-270m' (the embedded base) or ollama:NAME.")
@click.option("--compare", default=None, metavar="BASE_MODEL",
              help="Original model (same forms as --model) whose answer the page shows beside the served one.")
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1, this machine only].")
@click.option("--port", type=int, default=None, help="TCP port to listen on; 0 picks a free port [default: 8000].")
@click.option("--max-question-chars", type=int, default=None, metavar="N",
              help="Maximum characters in a question [default: 4000].")
@click.option("--max-tokens", type=int, default=None, metavar="N",
              help="Maximum output tokens per answer [default: 256].")
@click.option("--max-body-bytes", type=int, default=None, metavar="BYTES",
              help="Maximum request body size; larger bodies get 413 [default: 262144].")
@click.option("--max-pending", type=int, default=None, metavar="N",
              help="Requests admitted at once per model, one generating and the rest queued; "
                   "more get 503 [default: 8].")
@click.option("--queue-timeout", type=float, default=None, metavar="SECONDS",
              help="Seconds a queued request waits before it gets 503 [default: 300].")
@click.option("--temperature", type=float, default=None, help="Sampling temperature [default: 0, greedy].")
@click.option("--system-prompt", default=None, metavar="TEXT", help="System text put before every /unlearn/ question.")
@click.option("--context-size", type=int, default=None, metavar="TOKENS",
              help="Context window for a GGUF loaded with llama.cpp [default: 2048].")
@click.option("--ollama-host", default=None, metavar="URL",
              help="Ollama server for ollama:NAME [default: $OLLAMA_HOST or http://127.0.0.1:11434].")
@click.option("--request-timeout", type=float, default=None, metavar="SECONDS",
              help="Per-request timeout passed to the backend [default: 600].")
@config_option
@click.pass_context
def serve_command(ctx: click.Context, config_file: Optional[Any], **_: Any) -> None:
    """Serve MODEL over HTTP: POST /unlearn/, an OpenAI-compatible /v1/chat/completions, /health, and a web page at /.

    Listens on 127.0.0.1 only, unless --host sets another address. Stop with Ctrl+C.
    """
    from ..config import build_config
    from ..serve import ServeConfig, run_serve

    config = build_config(ServeConfig, config_file, given_options(ctx, _CONFIG_FIELDS), section="serve")
    quiet = is_quiet()
    if not quiet:
        _show_info_logs()
    result = run_serve(config, on_ready=_print_startup, log_level="warning" if quiet else "info")
    noun = "request" if result.requests == 1 else "requests"
    click.echo(f"Stopped after {result.requests} {noun} ({result.errors} failed).")


def _show_info_logs() -> None:
    """Show starts, stops and model loading at INFO: a server's log is its main output."""
    for handler in logging.getLogger("relearn_local").handlers:
        if getattr(handler, "_relearn_console", False) and handler.level > logging.INFO:
            handler.setLevel(logging.INFO)


def _print_startup(startup: Any) -> None:
    click.echo(f"Model: {startup.model.display}")
    if startup.compare is not None:
        click.echo(f"Original model for comparison: {startup.compare.display}")
    click.echo(f"Serving on {startup.url}  (page: {startup.url}/, API: POST {startup.url}/unlearn/)")
    click.echo("Press Ctrl+C to stop.")


COMMANDS = [serve_command]
