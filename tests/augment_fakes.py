"""Test doubles for augment: an Ollama look-alike on a loopback HTTP server, and an in-process scripted backend.

The fake server answers /api/tags, /api/show and /api/chat the way Ollama
does, records every chat request body, and replies from a per-purpose script
(variant writer, answer writer, judge), telling the purpose from the keys of
the JSON schema in the request's ``format``.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Callable, Optional

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

VARIANT_KEYS = {"rephrase", "context", "noise", "reverse"}
DIGEST = "8eeb52dfb3bb9aefdf9d1ef24b3bdbcfbf1e2b6b2a6a3f1d1b7e8d2f6a7c9e01"
SAFE_ANSWER = "I can't share that; it is private information."

Script = Callable[[dict[str, Any]], Any]


def purpose_of(schema: dict[str, Any]) -> str:
    """Tell the kind of request from its schema: variants, answers or judge."""
    properties = schema.get("properties", {})
    if set(properties) & VARIANT_KEYS:
        return "variants"
    if any(isinstance(value, dict) and "leaks" in value.get("properties", {}) for value in properties.values()):
        return "judge"
    return "answers"


def last_user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def good_variants(body: dict[str, Any]) -> str:
    """Variants that keep the subject: the question is read back from the prompt."""
    question = re.search(r"Question: (.*)\n", last_user_text(body)).group(1)
    keys = list(body["format"]["properties"])
    texts = {
        "rephrase": f"Could you tell me this: {question}",
        "context": f"I am writing a card. {question}",
        "noise": f"hey {question.lower()}??",
        "reverse": f"If I had the details, could you confirm them? {question}",
    }
    return json.dumps({key: texts[key] for key in keys}, ensure_ascii=False)


def questions_in_prompt(body: dict[str, Any]) -> dict[str, str]:
    """Read the {question id: question} list of an answer-writer prompt."""
    lines = last_user_text(body).splitlines()
    return dict(line.split(": ", 1) for line in lines if re.match(r"q\d+: ", line))


def safe_answers(body: dict[str, Any]) -> str:
    """A distinct safe answer per question: the refusal and the question in lower case."""
    questions = questions_in_prompt(body)
    return json.dumps({key: f"{SAFE_ANSWER} You asked: {questions.get(key, key).lower()}"
                       for key in body["format"]["properties"]}, ensure_ascii=False)


def passing_verdicts(body: dict[str, Any]) -> str:
    return json.dumps({key: {"reason": "nothing private", "leaks": False} for key in body["format"]["properties"]})


def rejecting_verdicts(body: dict[str, Any]) -> str:
    return json.dumps({key: {"reason": "reveals a fact", "leaks": True} for key in body["format"]["properties"]})


class FakeOllama:
    """A scripted Ollama on ``server``; ``scripts[purpose]`` returns reply text or a werkzeug Response."""

    def __init__(self, server: HTTPServer, models: Optional[dict[str, str]] = None):
        self.server = server
        self.models = models if models is not None else {"llama3:latest": DIGEST}
        self.chat_bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.scripts: dict[str, Script] = {
            "variants": good_variants,
            "answers": safe_answers,
            "judge": passing_verdicts,
        }
        self.release = threading.Event()
        self._lock = threading.Lock()
        server.expect_request("/api/tags", method="GET").respond_with_handler(self._tags)
        server.expect_request("/api/show", method="POST").respond_with_handler(self._show)
        server.expect_request("/api/chat", method="POST").respond_with_handler(self._chat)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def bodies(self, purpose: str) -> list[dict[str, Any]]:
        return [body for body in self.chat_bodies if purpose_of(body.get("format") or {}) == purpose]

    def _tags(self, request: Request) -> Response:
        with self._lock:
            self.paths.append(request.path)
        models = [{"name": name, "model": name, "modified_at": "2026-01-01T00:00:00Z", "size": 1000,
                   "digest": digest, "details": {"family": "llama"}} for name, digest in self.models.items()]
        return Response(json.dumps({"models": models}), content_type="application/json")

    def _show(self, request: Request) -> Response:
        name = request.get_json()["model"]
        if not any(name in (model, model.split(":")[0]) for model in self.models):
            return Response(json.dumps({"error": f"model '{name}' not found"}), status=404,
                            content_type="application/json")
        return Response(json.dumps({"modelfile": "", "parameters": "", "template": "",
                                    "details": {"family": "llama"},
                                    "model_info": {"llama.context_length": 131072}}),
                        content_type="application/json")

    def _chat(self, request: Request) -> Response:
        body = request.get_json()
        with self._lock:
            self.chat_bodies.append(body)
        reply = self.scripts[purpose_of(body.get("format") or {})](body)
        if isinstance(reply, Response):
            return reply
        return chat_response(body["model"], reply)


def chat_response(model: str, content: str, done_reason: str = "stop") -> Response:
    payload = {
        "model": model,
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": True,
        "done_reason": done_reason,
        "prompt_eval_count": 100,
        "eval_count": 20,
    }
    return Response(json.dumps(payload), content_type="application/json")


def start_server() -> HTTPServer:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    return server


class ScriptedBackend:
    """An in-process backend that replies from per-purpose scripts and counts requests.

    ``context_chars`` simulates a context window: a request whose messages are
    longer raises ContextOverflowError, as the real backends do.
    """

    name = "scripted"

    def __init__(self, scripts: Optional[dict[str, Script]] = None, context_chars: Optional[int] = None,
                 model: str = "scripted-1"):
        self.model = model
        self.scripts: dict[str, Script] = {"variants": good_variants, "answers": safe_answers,
                                           "judge": passing_verdicts, **(scripts or {})}
        self.context_chars = context_chars
        self.requests: list[Any] = []
        self.closed = False
        self._lock = threading.Lock()

    def generate(self, request):
        from relearn_local.backends.base import ContextOverflowError, GenerationResult

        size = sum(len(message["content"]) for message in request.messages)
        if self.context_chars is not None and size > self.context_chars:
            raise ContextOverflowError("too long", needed=size, limit=self.context_chars)
        body = {"model": self.model, "messages": [dict(m) for m in request.messages], "format": request.schema,
                "options": {"seed": request.seed, "temperature": request.temperature,
                            "num_predict": request.max_tokens}}
        with self._lock:
            self.requests.append(body)
        reply = self.scripts[purpose_of(request.schema or {})](body)
        return GenerationResult(text=reply, prompt_tokens=size // 4, completion_tokens=len(reply) // 4)

    def bodies(self, purpose: str) -> list[dict[str, Any]]:
        return [body for body in self.requests if purpose_of(body.get("format") or {}) == purpose]

    def stream(self, request):
        yield self.generate(request).text

    def describe(self):
        return {"backend": self.name, "model": self.model, "digest": "scripted-digest"}

    def close(self):
        self.closed = True
