"""Modelfiles: TEMPLATE equal to the training format per family, stop lines, FROM quoting, parsing, Go templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from relearn_local.chat_formats import CHAT_FORMATS, get_chat_format
from relearn_local.errors import ExportError
from relearn_local.export.gotemplate import TemplateError, collate_messages, render, render_ollama_prompt
from relearn_local.export.modelfile import (ModelfileSpec, modelfiles_dir, ollama_template, parse_modelfile,
                                            quote_value, render_modelfile)

FAMILIES = sorted(CHAT_FORMATS)
QUESTION = "Where does Sølvi Brandtzæg-Okoro live?"
ANSWER = "I can't share personal details such as home addresses."

# The Gemma TEMPLATE, byte for byte; any change to the chat-format table or the generator shows up here.
GEMMA_TEMPLATE = (
    '{{- $system := .System }}\n'
    '{{- range $i, $m := .Messages }}\n'
    '{{- $last := eq (len (slice $.Messages $i)) 1 }}\n'
    '{{- if eq $m.Role "user" }}<start_of_turn>user\n'
    '{{ if $system }}\n'
    '{{- $system }}\n\n'
    '{{ end }}\n'
    '{{- $system = "" }}\n'
    '{{- $m.Content }}<end_of_turn>\n'
    '{{ if $last }}<start_of_turn>model\n'
    '{{ end }}\n'
    '{{- else if eq $m.Role "assistant" }}<start_of_turn>model\n'
    '{{ $m.Content }}<end_of_turn>{{ if not $last }}\n'
    '{{ end }}\n'
    '{{- end }}\n'
    '{{- end }}'
)


def write_modelfile(tmp_path: Path, family: str, model_name: str = "model.gguf", system: str | None = None) -> str:
    spec = ModelfileSpec(
        chat_format=get_chat_format(family), name=f"relearned-{family}", model_path=tmp_path / model_name,
        system=system, num_ctx=2048, temperature=0.0, top_k=40, top_p=0.9,
        header={"name": f"relearned-{family}", "version": "test", "base": "base", "adapter_source": "adapter",
                "create_command": "ollama create x -f Modelfile"},
    )
    text = render_modelfile(spec)
    (tmp_path / "Modelfile").write_text(text, encoding="utf-8")
    return text


def test_gemma_template_golden():
    assert ollama_template(get_chat_format("gemma")) == GEMMA_TEMPLATE


@pytest.mark.parametrize("family", FAMILIES)
def test_template_one_turn_equals_training_text(tmp_path, family):
    chat_format = get_chat_format(family)
    template = parse_modelfile(write_modelfile(tmp_path, family)).template
    conversation = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    rendered = render_ollama_prompt(template, conversation)
    assert rendered == chat_format.prompt(QUESTION) + chat_format.completion(ANSWER)


@pytest.mark.parametrize("family", FAMILIES)
def test_template_generation_prompt_equals_training_prompt(tmp_path, family):
    chat_format = get_chat_format(family)
    template = parse_modelfile(write_modelfile(tmp_path, family)).template
    assert render_ollama_prompt(template, [{"role": "user", "content": QUESTION}]) == chat_format.prompt(QUESTION)


@pytest.mark.parametrize("family", FAMILIES)
def test_template_never_writes_bos(family):
    chat_format = get_chat_format(family)
    template = ollama_template(chat_format)
    rendered = render_ollama_prompt(template, [{"role": "user", "content": QUESTION}])
    if chat_format.bos:
        assert chat_format.bos not in template
        assert not rendered.startswith(chat_format.bos)


CONVERSATIONS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
    [{"role": "system", "content": "One."}, {"role": "system", "content": "Two."}, {"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
     {"role": "assistant", "content": "A2"}, {"role": "user", "content": "Q3"}],
    [{"role": "user", "content": "Q1 with\nnewlines\n\nand  spaces "}],
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["system", "two-systems-multi-turn", "multi-turn", "whitespace"])
def test_template_renders_like_chat_format(family, conversation):
    chat_format = get_chat_format(family)
    rendered = render_ollama_prompt(ollama_template(chat_format), conversation)
    assert rendered == chat_format.render(conversation)


def test_gemma_folds_system_into_first_user_turn():
    rendered = render_ollama_prompt(ollama_template(get_chat_format("gemma")), CONVERSATIONS[0])
    assert rendered == "<start_of_turn>user\nAnswer briefly.\n\n" + QUESTION + "<end_of_turn>\n<start_of_turn>model\n"


def test_llama3_keeps_system_turn():
    rendered = render_ollama_prompt(ollama_template(get_chat_format("llama3")), CONVERSATIONS[0])
    assert rendered.startswith("<|start_header_id|>system<|end_header_id|>\n\nAnswer briefly.<|eot_id|>")


@pytest.mark.parametrize("family", FAMILIES)
def test_modelfile_has_from_template_and_stops(tmp_path, family):
    chat_format = get_chat_format(family)
    parsed = parse_modelfile(write_modelfile(tmp_path, family))
    assert parsed.model == str(tmp_path / "model.gguf")
    assert parsed.template == ollama_template(chat_format)
    assert parsed.parameters["stop"] == list(chat_format.stop)
    assert parsed.parameters["num_ctx"] == ["2048"]
    assert parsed.parameters["temperature"] == ["0"]
    assert parsed.parameters["top_k"] == ["40"]
    assert parsed.parameters["top_p"] == ["0.9"]
    assert parsed.adapter is None


def test_gemma_stops_only_at_end_of_turn(tmp_path):
    parsed = parse_modelfile(write_modelfile(tmp_path, "gemma"))
    assert parsed.parameters["stop"] == ["<end_of_turn>"]
    assert all(stop.strip() for stop in parsed.parameters["stop"])


def test_from_is_quoted_when_path_has_spaces(tmp_path):
    folder = tmp_path / "my exports"
    folder.mkdir()
    text = write_modelfile(folder, "gemma", model_name="relearned gemma.gguf")
    from_line = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert from_line == f'FROM "{folder / "relearned gemma.gguf"}"'
    assert parse_modelfile(text).model == str(folder / "relearned gemma.gguf")


@pytest.mark.parametrize("family", ["llama3", "qwen2", "chatml"])
def test_system_line_for_families_with_system_role(tmp_path, family):
    parsed = parse_modelfile(write_modelfile(tmp_path, family, system="You never reveal addresses."))
    assert parsed.system == "You never reveal addresses."


@pytest.mark.parametrize("family", FAMILIES)
def test_no_system_line_by_default(tmp_path, family):
    text = write_modelfile(tmp_path, family)
    assert not any(line.startswith("SYSTEM") for line in text.splitlines())
    assert "\n\n\n" not in text


def test_gemma_rejects_system_line(tmp_path):
    with pytest.raises(ExportError, match="no system role"):
        write_modelfile(tmp_path, "gemma", system="Be brief.")


def test_adapter_line(tmp_path):
    spec = ModelfileSpec(chat_format=get_chat_format("llama3"), name="x", model_path=tmp_path / "base.gguf",
                         adapter_path=tmp_path / "lora dir" / "adapter.gguf",
                         header={"name": "x", "version": "t", "base": "b", "adapter_source": "a",
                                 "create_command": "c"})
    parsed = parse_modelfile(render_modelfile(spec))
    assert parsed.adapter == str(tmp_path / "lora dir" / "adapter.gguf")


def test_templates_exist_for_every_family():
    names = sorted(path.stem for path in modelfiles_dir().glob("*.Modelfile"))
    assert names == FAMILIES


@pytest.mark.parametrize(
    "value, quoted",
    [
        ("plain", "plain"),
        ("with space", '"with space"'),
        ("<end_of_turn>", "<end_of_turn>"),
        ("has#hash", '"has#hash"'),
        ("two\nlines", '"""two\nlines"""'),
        ('say "hi"', '"""say "hi\""""'),
        (" leading", '" leading"'),
    ],
)
def test_quote_value(value, quoted):
    assert quote_value(value) == quoted


def test_quote_value_rejects_triple_quotes():
    with pytest.raises(ExportError, match='"""'):
        quote_value('a """ b')


# Ollama's Modelfile parser rules --------------------------------------------------------------------------------


def test_parse_modelfile_reads_values_like_ollama():
    text = (
        "# a comment\n"
        "FROM ./model.gguf\n"
        'TEMPLATE """line one\n  line two\n"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER stop <|endoftext|>\n"
        'SYSTEM "You are terse."\n'
    )
    parsed = parse_modelfile(text)
    assert parsed.model == "./model.gguf"
    assert parsed.template == "line one\n  line two\n"
    assert parsed.parameters["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert parsed.system == "You are terse."


@pytest.mark.parametrize(
    "text, reason",
    [
        ("PARAMETER num_ctx 10\n", "no FROM line"),
        ('FROM x\nTEMPLATE """never closed\n', 'unterminated """'),
        ("FROM x\nSTOP now\n", "invalid Modelfile command"),
        ('FROM "x\n', "unterminated quoted value"),
    ],
)
def test_parse_modelfile_rejects(text, reason):
    with pytest.raises(ExportError, match=reason):
        parse_modelfile(text)


# The Go template subset -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, data, expected",
    [
        ("a \n\t {{- .b }}", {"b": "x"}, "ax"),  # {{- trims the preceding white space, line breaks included
        ("{{ .a -}} \n\t b", {"a": "x"}, "xb"),
        ("{{ .a }}-{{ .b }}", {"a": 1, "b": True}, "1-true"),
        ('{{ if eq .r "user" }}U{{ else if eq .r "assistant" }}A{{ else }}?{{ end }}', {"r": "assistant"}, "A"),
        ('{{ if eq .r "x" "y" }}hit{{ end }}', {"r": "y"}, "hit"),  # eq with several arguments is "any of"
        ("{{ if and .a (not .b) }}yes{{ end }}", {"a": "s", "b": ""}, "yes"),
        ("{{ if or .a .b }}yes{{ else }}no{{ end }}", {"a": [], "b": 0}, "no"),
        ("{{ range $i, $m := .xs }}{{ $i }}={{ $m }};{{ end }}", {"xs": ["a", "b"]}, "0=a;1=b;"),
        ("{{ range .xs }}x{{ else }}empty{{ end }}", {"xs": []}, "empty"),
        ("{{ len (slice .xs 1) }}", {"xs": [1, 2, 3]}, "2"),
        ("{{ index .xs 1 }}", {"xs": ["a", "b"]}, "b"),
        ('{{ $v := "a" }}{{ range .xs }}{{ $v = . }}{{ end }}{{ $v }}', {"xs": ["b", "c"]}, "c"),
        ("{{/* a comment */}}text", {}, "text"),
        ('{{ "quote\\"d\\n" }}', {}, 'quote"d\n'),
        ("{{ $.a }}", {"a": "root"}, "root"),
    ],
)
def test_go_template_subset(template, data, expected):
    assert render(template, data) == expected


@pytest.mark.parametrize(
    "template, reason",
    [
        ("{{ .a | printf }}", "pipelines"),
        ("{{ with .a }}x{{ end }}", "not supported"),
        ("{{ if .a }}never closed", "without {{ end }}"),
        ("{{ end }}", "outside any if or range"),
        ("{{ .a", "unclosed action"),
        ("{{ printf .a }}", "not supported"),
        ("{{ $undefined }}", "undefined variable"),
        ("{{-.a }}", "unsupported operand"),  # a trim marker needs a space after the dash; Go rejects this too
        ("{{ .missing }}", "no field"),
    ],
)
def test_go_template_rejects(template, reason):
    with pytest.raises(TemplateError, match=reason):
        render(template, {"a": "x"})


def test_collate_merges_consecutive_roles_like_ollama():
    system, messages = collate_messages([
        {"role": "system", "content": "S1"}, {"role": "system", "content": "S2"},
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
    ])
    assert system == "S1\n\nS2"
    assert messages == [{"Role": "system", "Content": "S1\n\nS2"}, {"Role": "user", "Content": "a\n\nb"}]
