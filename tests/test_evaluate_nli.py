"""NLI sources: the LLM judge through a scripted backend, and a local HF classifier with its label map."""

from __future__ import annotations

import json

import pytest

from relearn_local.backends.base import GenerationRequest, GenerationResult
from relearn_local.errors import BackendError, ConfigError, ModelError
from relearn_local.evaluate.config import parse_judge_spec
from relearn_local.evaluate.nli import (JUDGE_TEXT_LIMIT, VERDICT_SCHEMA, ClassifierNli, JudgeNli, build_nli,
                                        canonical_label, judge_messages, nli_pairs, parse_verdict)


class ScriptedBackend:
    """A GenerationBackend that replies from a script and records every request."""

    name = "scripted"
    model = "judge-model"

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else '{"label": "neutral"}'
        if isinstance(reply, Exception):
            raise reply
        return GenerationResult(text=reply)

    def stream(self, request):
        yield self.generate(request).text

    def describe(self):
        return {"backend": self.name, "model": self.model}

    def close(self):
        pass


PARSE_CASES = [
    ('{"label": "contradiction"}', "contradiction", "plain JSON"),
    ('{"label": "Entailment"}' + " " * 3000, "entailment", "JSON followed by padding"),
    ('Sure!\n```json\n{"label": "neutral"}\n```\nDone.', "neutral", "prose around a fenced block"),
    ('<think>the premise says Paris</think>{"label": "contradiction"}', "contradiction", "think block first"),
    ("entailment", "entailment", "bare label word"),
    ("{}", None, "empty object"),
    ('{"label": "contra', None, "cut off mid-string"),
    ('{"label": "maybe"}', None, "label outside the three"),
    ('{"verdict": "entailment"}', None, "required field missing"),
    ("I think it is entailment because", None, "prose without a verdict"),
]


@pytest.mark.parametrize("reply, expected, reason", PARSE_CASES)
def test_parse_verdict(reply, expected, reason):
    assert parse_verdict(reply) == expected, reason


def test_judge_request_is_structured_and_bounded():
    backend = ScriptedBackend(['{"label": "entailment"}'])
    verdict = JudgeNli(backend, timeout=5).judge_one("Mara lives in Oslo.", "Mara lives in Oslo.")
    assert verdict.label == "entailment"
    request = backend.requests[0]
    assert request.schema == VERDICT_SCHEMA
    assert request.temperature == 0.0
    assert 0 < request.max_tokens <= 64
    assert request.timeout == 5
    assert "$defs" not in json.dumps(request.schema)


def test_judge_messages_hold_examples_and_pair():
    messages = judge_messages("premise text", "hypothesis text")
    assert messages[0]["role"] == "system"
    assert [message["role"] for message in messages[1:]].count("assistant") == 3
    assert messages[-1] == {"role": "user", "content": "Premise: premise text\nHypothesis: hypothesis text"}


def test_judge_clips_long_texts():
    long_text = "person-a@example.invalid " + "word " * 5000
    content = judge_messages(long_text, "short")[-1]["content"]
    assert "person-a@example.invalid" in content
    assert len(content) < JUDGE_TEXT_LIMIT + 200


def test_judge_retries_invalid_reply():
    backend = ScriptedBackend(["{}", '{"label": "contradiction"}'])
    verdict = JudgeNli(backend, retries=2).judge_one("a", "b")
    assert verdict.label == "contradiction"
    assert len(backend.requests) == 2


def test_judge_failure_is_na_not_a_label():
    backend = ScriptedBackend(["{}", "{}", "{}"])
    verdict = JudgeNli(backend, retries=2).judge_one("a", "b")
    assert verdict.label is None
    assert "not a valid verdict" in verdict.error
    assert len(backend.requests) == 3


def test_judge_backend_error_is_na():
    backend = ScriptedBackend([BackendError("connection refused")] * 2)
    verdict = JudgeNli(backend, retries=1).judge_one("a", "b")
    assert verdict.label is None
    assert "connection refused" in verdict.error


def test_judge_many_reports_progress():
    backend = ScriptedBackend(['{"label": "neutral"}', '{"label": "entailment"}'])
    events = []
    verdicts = JudgeNli(backend).judge([("a", "b"), ("c", "d")], events.append)
    assert [verdict.label for verdict in verdicts] == ["neutral", "entailment"]
    assert events[-1].done


def test_nli_pair_direction():
    assert nli_pairs("forget", ["answer"], ["truth"]) == [("answer", "truth")]
    assert nli_pairs("retain", ["answer"], ["truth"]) == [("truth", "answer")]


@pytest.mark.parametrize("name, expected", [
    ("ENTAILMENT", "entailment"), ("entailed", "entailment"), ("Contradiction", "contradiction"),
    ("neutral", "neutral"), ("not_entailment", "neutral"), ("LABEL_0", None),
])
def test_canonical_label(name, expected):
    assert canonical_label(name) == expected


def test_judge_spec_parsing():
    assert parse_judge_spec("ollama:llama3") == ("ollama", "llama3")
    assert parse_judge_spec("llamacpp:/models/judge.gguf") == ("llamacpp", "/models/judge.gguf")
    assert parse_judge_spec("llamacpp") == ("llamacpp", None)
    with pytest.raises(ConfigError, match="unknown backend"):
        parse_judge_spec("vllm:x")
    with pytest.raises(ConfigError, match="name the Ollama model"):
        parse_judge_spec("ollama")


def test_build_nli_judge_through_registry(monkeypatch):
    created = {}

    def fake_get_backend(name, model=None, **options):
        created.update(name=name, model=model)
        return ScriptedBackend([])

    monkeypatch.setattr("relearn_local.backends.get_backend", fake_get_backend)
    source = build_nli(None, "ollama:llama3")
    assert created == {"name": "ollama", "model": "llama3"}
    assert source.description == "judge:scripted:judge-model"


def test_build_nli_off():
    assert build_nli(None, None) is None


def _tiny_classifier(folder, tokenizer, id2label, winner):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256, num_labels=len(id2label),
                        id2label=id2label, label2id={name: index for index, name in id2label.items()})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.bias.zero_()
        model.classifier.bias[winner] = 50.0
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_classifier_maps_labels_through_config(tmp_path, tiny_tokenizer):
    folder = _tiny_classifier(tmp_path / "nli", tiny_tokenizer, {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
                              winner=0)
    source = ClassifierNli(folder, batch_size=2)
    verdicts = source.judge([("Mara lives in Oslo.", "Mara lives in Paris.")] * 3)
    assert [verdict.label for verdict in verdicts] == ["contradiction"] * 3
    assert all(verdict.score > 0.99 for verdict in verdicts)
    assert source.description.startswith("classifier:")


def test_classifier_with_unnamed_labels_rejected(tmp_path, tiny_tokenizer):
    folder = _tiny_classifier(tmp_path / "nli", tiny_tokenizer, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, winner=0)
    with pytest.raises(ModelError, match="id2label"):
        ClassifierNli(folder)


def test_classifier_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        ClassifierNli(tmp_path / "missing")
