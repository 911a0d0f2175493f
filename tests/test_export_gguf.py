"""GGUF round trip: the exported file read back with the gguf reader and llama.cpp has the serving metadata.

Checked: turn, BOS and EOS tokens are control tokens. EOS is a generation
EOS, the end-of-turn token is the EOT, and a newline never stops generation.
The vocabulary matches the embedding rows, and the chat template and BOS
flag match training. The Modelfile's TEMPLATE plus the GGUF's BOS flag give
exactly the token ids training used. Also covers the metadata editor and the
SentencePiece model written for the converter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export_support import (FORGET, converter, export_base_dir, export_tiny, tiny_adapter, tiny_export_f16,  # noqa: F401
                            tiny_export_q8)
from relearn_local.chat_formats import encode_example, encode_prompt, get_chat_format
from relearn_local.errors import ExportError
from relearn_local.export.gguf_checks import check_gguf, finalize_gguf
from relearn_local.export.gguf_metadata import TOKEN_CONTROL, TOKEN_NORMAL, edit_gguf_metadata, read_gguf_report
from relearn_local.export.gotemplate import render_ollama_prompt
from relearn_local.export.modelfile import parse_modelfile

GEMMA = get_chat_format("gemma")


def test_gguf_reader_round_trip(tiny_export_f16, tiny_tokenizer):
    from gguf import GGUFReader, Keys

    reader = GGUFReader(str(tiny_export_f16.gguf_path))
    tokens = reader.get_field(Keys.Tokenizer.LIST).contents()
    types = reader.get_field(Keys.Tokenizer.TOKEN_TYPE).contents()
    embedding = next(tensor for tensor in reader.tensors if tensor.name == "token_embd.weight")
    start, end = tiny_tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])
    assert reader.get_field(Keys.General.ARCHITECTURE).contents() == "gemma3"
    assert reader.get_field(Keys.Tokenizer.MODEL).contents() == "llama"
    assert reader.get_field(Keys.Tokenizer.SCORES) is not None
    assert len(tokens) == embedding.shape[1] == len(tiny_tokenizer)
    assert tokens[start] == "<start_of_turn>"
    assert tokens[end] == "<end_of_turn>"
    assert types[start] == TOKEN_CONTROL
    assert types[end] == TOKEN_CONTROL
    assert types[tiny_tokenizer.bos_token_id] == TOKEN_CONTROL
    assert types[tiny_tokenizer.eos_token_id] == TOKEN_CONTROL
    assert reader.get_field(Keys.Tokenizer.EOT_ID).contents() == end
    assert reader.get_field(Keys.Tokenizer.EOS_ID).contents() in (tiny_tokenizer.eos_token_id, end)
    assert reader.get_field(Keys.Tokenizer.BOS_ID).contents() == tiny_tokenizer.bos_token_id
    assert reader.get_field(Keys.Tokenizer.ADD_BOS).contents() is True
    assert reader.get_field(Keys.Tokenizer.CHAT_TEMPLATE).contents() == GEMMA.jinja_template()
    assert all(tensor.name != "output.weight" for tensor in reader.tensors)  # tied embeddings stay tied


def test_report_matches_gguf_reader(tiny_export_f16):
    from gguf import GGUFReader, Keys

    reader = GGUFReader(str(tiny_export_f16.gguf_path))
    report = read_gguf_report(tiny_export_f16.gguf_path, {0, 4, 5, 999})
    types = reader.get_field(Keys.Tokenizer.TOKEN_TYPE).contents()
    tokens = reader.get_field(Keys.Tokenizer.LIST).contents()
    assert report.token_count == len(tokens)
    assert report.tensor_count == len(reader.tensors)
    assert report.token_types == {index: types[index] for index in (0, 4, 5, 999)}
    assert report.token_texts == {index: tokens[index] for index in (0, 4, 5, 999)}
    assert report.chat_template == reader.get_field(Keys.Tokenizer.CHAT_TEMPLATE).contents()


def test_export_summary_records_checks(tiny_export_f16):
    summary = json.loads(tiny_export_f16.summary_path.read_text(encoding="utf-8"))
    assert summary["quant"] == "f16"
    assert summary["gguf"]["eot_id"] == summary["serving_expectations"]["end_of_turn_id"]
    assert summary["parity"]["passed"] is True
    assert summary["merge_check"]["passed"] is True
    assert summary["commands"]["run"] == "ollama run relearned-tiny"
    assert set(summary["timings_seconds"]) >= {"merge", "convert", "finalize", "parity"}


def test_llama_cpp_stop_tokens(tiny_export_f16, tiny_tokenizer):
    import llama_cpp

    model = llama_cpp.Llama(str(tiny_export_f16.gguf_path), n_ctx=64, vocab_only=True, verbose=False)
    vocabulary = llama_cpp.llama_model_get_vocab(model.model)
    end = tiny_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert llama_cpp.llama_vocab_is_eog(vocabulary, end)
    assert llama_cpp.llama_vocab_is_eog(vocabulary, tiny_tokenizer.eos_token_id)
    assert llama_cpp.llama_vocab_eot(vocabulary) == end
    assert not any(llama_cpp.llama_vocab_is_eog(vocabulary, token) for token in newline)
    model.close()


def test_template_and_bos_flag_give_training_ids(tiny_export_f16, tiny_tokenizer):
    """Ollama prepends BOS when add_bos_token is set; with the TEMPLATE that gives exactly training's ids."""
    import llama_cpp

    template = parse_modelfile(tiny_export_f16.modelfile_path.read_text(encoding="utf-8")).template
    model = llama_cpp.Llama(str(tiny_export_f16.gguf_path), n_ctx=256, vocab_only=True, verbose=False)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(model.model))
    records = json.loads(FORGET.read_text(encoding="utf-8"))[:5]
    for record in records:
        conversation = [{"role": "user", "content": record["question"]},
                        {"role": "assistant", "content": record["answer"]}]
        text = render_ollama_prompt(template, conversation)
        served = model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        trained = encode_example(tiny_tokenizer, GEMMA, record["question"], record["answer"]).input_ids
        prompt = encode_prompt(tiny_tokenizer, GEMMA, record["question"])
        assert served.count(tiny_tokenizer.bos_token_id) == 1
        assert served[0] == tiny_tokenizer.bos_token_id
        assert served[:len(prompt)] == prompt
        assert served == trained
    model.close()


def test_q8_export_passes_strict_parity(tiny_export_q8):
    assert tiny_export_q8.gguf.file_type == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert tiny_export_q8.parity.strict
    assert tiny_export_q8.parity.passed, tiny_export_q8.parity.verdict()
    assert not (tiny_export_q8.out / f".{tiny_export_q8.plan.file_stem}-convert-f16.gguf").exists()


def test_f16_parity_is_exact(tiny_export_f16):
    parity = tiny_export_f16.parity
    assert parity.passed, parity.verdict()
    assert len(parity.items) == 3
    for item in parity.items:
        assert item.prompt_matches_training
        assert item.gguf_tokens[:8] == item.reference_tokens[:8]


def test_relative_out_folder_converts(tmp_path_factory, tiny_adapter, converter, monkeypatch):
    # The converter runs in a scratch folder, so a relative --out (as `make demo`
    # passes) must reach it as an absolute path.
    workdir = tmp_path_factory.mktemp("relative-out")
    monkeypatch.chdir(workdir)
    result = export_tiny(tmp_path_factory, tiny_adapter, "f16", out=Path("runs") / "export")
    written = workdir / "runs" / "export" / result.gguf_path.name
    assert written.is_file()
    assert result.parity.passed, result.parity.verdict()


# Metadata editing and checks ------------------------------------------------------------------------------------


def test_edit_keeps_tensors_and_changes_keys(tiny_export_f16, tmp_path):
    from gguf import GGUFReader, GGUFValueType, Keys

    source = tiny_export_f16.gguf_path
    target = tmp_path / "edited.gguf"
    edit_gguf_metadata(source, target, {
        Keys.General.NAME: (GGUFValueType.STRING, "a longer name than before, to move the data section"),
        Keys.Tokenizer.EOT_ID: (GGUFValueType.UINT32, 1),
        "relearn.test_flag": (GGUFValueType.BOOL, True),
    }, {4: TOKEN_NORMAL})
    before, after = GGUFReader(str(source)), GGUFReader(str(target))
    assert after.get_field(Keys.General.NAME).contents().startswith("a longer name")
    assert after.get_field(Keys.Tokenizer.EOT_ID).contents() == 1
    assert after.get_field("relearn.test_flag").contents() is True
    assert after.get_field(Keys.Tokenizer.TOKEN_TYPE).contents()[4] == TOKEN_NORMAL
    assert after.get_field(Keys.Tokenizer.TOKEN_TYPE).contents()[5] == TOKEN_CONTROL
    assert [tensor.name for tensor in after.tensors] == [tensor.name for tensor in before.tensors]
    for old, new in zip(before.tensors, after.tensors):
        assert old.data.tobytes() == new.data.tobytes()


def break_gguf(tiny_export_f16, tmp_path: Path, values: dict, token_types: dict | None = None) -> Path:
    target = tmp_path / "broken.gguf"
    edit_gguf_metadata(tiny_export_f16.gguf_path, target, values, token_types)
    return target


def test_check_lists_each_problem(tiny_export_f16, tiny_tokenizer, tmp_path):
    from gguf import GGUFValueType, Keys

    expected = serving_expectations_of(tiny_export_f16)
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    cases = [
        ({Keys.Tokenizer.EOS_ID: (GGUFValueType.UINT32, newline)}, None, "is a newline"),
        ({Keys.Tokenizer.EOT_ID: (GGUFValueType.UINT32, 3)}, None, "EOT id 3"),
        ({Keys.Tokenizer.ADD_BOS: (GGUFValueType.BOOL, False)}, None, "add_bos_token is False"),
        ({Keys.Tokenizer.CHAT_TEMPLATE: (GGUFValueType.STRING, "{{ messages }}")}, None, "chat_template"),
        ({}, {5: TOKEN_NORMAL}, "not control"),
    ]
    for values, token_types, reason in cases:
        report = read_gguf_report(break_gguf(tiny_export_f16, tmp_path, values, token_types), expected.token_ids())
        problems = check_gguf(report, expected)
        assert any(reason in problem for problem in problems), (reason, problems)


def test_finalize_repairs_a_converter_output(tiny_export_f16, tmp_path):
    from gguf import GGUFValueType, Keys

    expected = serving_expectations_of(tiny_export_f16)
    broken = break_gguf(tiny_export_f16, tmp_path, {
        Keys.Tokenizer.EOT_ID: (GGUFValueType.UINT32, 3),
        Keys.Tokenizer.ADD_BOS: (GGUFValueType.BOOL, False),
        Keys.Tokenizer.CHAT_TEMPLATE: (GGUFValueType.STRING, "{{ messages }}"),
    }, {4: TOKEN_NORMAL, 5: TOKEN_NORMAL})
    result = finalize_gguf(broken, tmp_path / "fixed.gguf", expected)
    assert check_gguf(result.report, expected) == []
    assert result.changed_token_types == 2
    assert set(result.changed_keys) == {Keys.Tokenizer.EOT_ID, Keys.Tokenizer.ADD_BOS, Keys.Tokenizer.CHAT_TEMPLATE}


def serving_expectations_of(export):
    from relearn_local.export.gguf_checks import ServingExpectations

    values = json.loads(export.summary_path.read_text(encoding="utf-8"))["serving_expectations"]
    values["control_ids"] = {int(key): value for key, value in values["control_ids"].items()}
    return ServingExpectations(**values, chat_template=GEMMA.jinja_template())


def test_not_a_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ExportError, match="not a GGUF"):
        read_gguf_report(path)


# The SentencePiece model written for the converter ---------------------------------------------------------------

CORPUS = [
    "Where does Mara live? She lives in a quiet town near the sea.",
    "Ilse Brønholt-Bâ’s mother was born in 1950.",
    "占位人物甲的地址是什么？ 😀",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "email: person-a@example.invalid, phone 555-0123",
]


def test_sentencepiece_model_tokenizes_like_tokenizer_json(tiny_tokenizer_dir, tiny_tokenizer, tmp_path):
    import sentencepiece

    from relearn_local.export.converter_input import is_sentencepiece_bpe, sentencepiece_model_bytes

    tokenizer_json = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert is_sentencepiece_bpe(tokenizer_json)
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model_bytes(tokenizer_json, {"unk": 3, "bos": 2, "eos": 1}))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert processor.get_piece_size() == len(tiny_tokenizer)
    lines = CORPUS + [record[key] for record in json.loads(FORGET.read_text(encoding="utf-8"))
                      for key in ("question", "answer")]
    for line in lines:
        if "<start_of_turn>" in line:
            continue  # SentencePiece itself does not split out control pieces; llama.cpp does (checked above)
        assert processor.encode(line) == tiny_tokenizer(line, add_special_tokens=False)["input_ids"], line


def test_staging_links_weights_and_adds_tokenizer_files(export_base_dir, tmp_path):
    from relearn_local.export.converter_input import stage_converter_input

    staged = stage_converter_input(export_base_dir, tmp_path / "staging", GEMMA)
    config = json.loads((staged.folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert staged.wrote_sentencepiece_model
    assert (staged.folder / "tokenizer.model").is_file()
    assert (staged.folder / "model.safetensors").is_symlink()
    assert config["chat_template"] == GEMMA.jinja_template()
    assert config["added_tokens_decoder"]["5"]["content"] == "<end_of_turn>"
    assert config["added_tokens_decoder"]["5"]["special"] is True
    assert not (export_base_dir / "tokenizer.model").exists()  # the model folder itself is unchanged


def test_staging_keeps_an_existing_tokenizer_model(export_base_dir, tmp_path):
    from relearn_local.export.converter_input import stage_converter_input

    model_dir = tmp_path / "model"
    shutil.copytree(export_base_dir, model_dir)
    (model_dir / "tokenizer.model").write_bytes(b"original")
    staged = stage_converter_input(model_dir, tmp_path / "staging", GEMMA)
    assert not staged.wrote_sentencepiece_model
    assert (staged.folder / "tokenizer.model").read_bytes() == b"original"
