"""The chat-format table: system folding, one BOS, date independence, stop cutting."""

from __future__ import annotations

import datetime

import pytest

from relearn_local.chat_formats import CHAT_FORMATS, encode_example, encode_prompt, family_for, get_chat_format
from relearn_local.errors import ModelError


def test_gemma_folds_system_into_first_user_turn():
    gemma = get_chat_format("gemma")
    text = gemma.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])
    assert text == "<start_of_turn>user\nBe brief.\n\nHi?<end_of_turn>\n<start_of_turn>model\n"
    assert "system" not in text


def test_llama3_keeps_system_turn():
    llama = get_chat_format("llama3")
    text = llama.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])
    assert text.startswith("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("family", sorted(CHAT_FORMATS))
def test_rendered_text_has_no_bos(family):
    chat_format = get_chat_format(family)
    text = chat_format.prompt("Question?", system="System.")
    if chat_format.bos:
        assert chat_format.bos not in text
        assert chat_format.with_bos(text).count(chat_format.bos) == 1


@pytest.mark.parametrize("family", sorted(CHAT_FORMATS))
def test_rendering_does_not_depend_on_date(family, monkeypatch):
    chat_format = get_chat_format(family)
    first = chat_format.prompt("When?", system="System.")

    class LaterDate(datetime.date):
        @classmethod
        def today(cls):
            return cls(2031, 7, 9)

    monkeypatch.setattr(datetime, "date", LaterDate)
    assert chat_format.prompt("When?", system="System.") == first


@pytest.mark.parametrize("family", sorted(CHAT_FORMATS))
def test_jinja_template_matches_render(family):
    jinja2 = pytest.importorskip("jinja2")
    chat_format = get_chat_format(family)
    template = jinja2.Environment().from_string(chat_format.jinja_template())
    cases = [
        [{"role": "user", "content": "Q?"}],
        [{"role": "system", "content": "S."}, {"role": "user", "content": "Q?"}],
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}, {"role": "user", "content": "Q2?"}],
    ]
    for messages in cases:
        rendered = template.render(messages=messages, bos_token=chat_format.bos or "", add_generation_prompt=True)
        assert rendered == chat_format.with_bos(chat_format.render(messages))


def test_cut_at_stop_removes_invented_turns():
    gemma = get_chat_format("gemma")
    assert gemma.cut_at_stop("Safe answer.<end_of_turn>\n<start_of_turn>user\nmore") == "Safe answer."
    assert gemma.cut_at_stop("No marker here") == "No marker here"


def test_unknown_family():
    with pytest.raises(ModelError, match="unknown chat format"):
        get_chat_format("nope")


@pytest.mark.parametrize(
    "architecture, vocabulary, family",
    [
        ("gemma3", None, "gemma"),
        ("gemma3_text", None, "gemma"),
        ("gemma2", None, "gemma"),
        ("llama", {"<|eot_id|>"}, "llama3"),
        ("llama", {"<s>"}, "chatml"),
        ("qwen2", None, "qwen2"),
        ("mistral", None, "chatml"),
        (None, None, "chatml"),
    ],
)
def test_family_detection(architecture, vocabulary, family):
    assert family_for(architecture, vocabulary) == family


def test_tokenized_prompt_has_one_bos(tiny_tokenizer):
    gemma = get_chat_format("gemma")
    ids = encode_prompt(tiny_tokenizer, gemma, "Where does Mara live?")
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.bos_token_id) == 1


def test_already_bos_prefixed_text_keeps_one_bos(tiny_tokenizer):
    gemma = get_chat_format("gemma")
    # A question that starts with the BOS string (as a rendered prompt would) must not yield two.
    ids = encode_prompt(tiny_tokenizer, gemma, "Hi?")
    text_ids = tiny_tokenizer(gemma.with_bos(gemma.prompt("Hi?")), add_special_tokens=False)["input_ids"]
    assert list(text_ids).count(tiny_tokenizer.bos_token_id) == 1
    assert ids == list(text_ids)


@pytest.mark.parametrize(
    "question, answer",
    [
        ("Where does Mara live", "lives in a quiet town."),  # letter | letter
        ("Where does Mara live? ", "She lives in a quiet town."),  # prompt ending in a space
        ("Who is Tomasz", "Tomasz is a painter."),
    ],
)
def test_labels_decode_to_exact_answer(tiny_tokenizer, question, answer):
    gemma = get_chat_format("gemma")
    example = encode_example(tiny_tokenizer, gemma, question, answer)
    supervised = [token for token, label in zip(example.input_ids, example.labels) if label != -100]
    assert supervised == [label for label in example.labels if label != -100]
    assert tiny_tokenizer.decode(supervised) == answer + "<end_of_turn>"
    prompt_ids = example.input_ids[: example.prompt_length]
    assert tiny_tokenizer.decode(prompt_ids[1:]) == gemma.prompt(question)
