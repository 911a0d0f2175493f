"""The augment command end to end against an Ollama look-alike on loopback: requests, replies, failures, cache."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug import Response

from augment_fakes import (DIGEST, FakeOllama, chat_response, passing_verdicts, rejecting_verdicts, safe_answers,
                           start_server)
from relearn_local.augment import AugmentConfig, run_augment
from relearn_local.augment.backend_choice import choose_backends
from relearn_local.backends.ollama_options import estimate_prompt_tokens
from relearn_local.backends.schema import is_flat
from relearn_local.cli import cli

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["rephrase", "context", "noise", "reverse"]
ITEMS = [
    {"question": "Where does Oriane Vasquez-Holm live?",
     "answer": "Oriane Vasquez-Holm lives at 41 Birchwood Road in Lakemoor, in a green cottage she bought in 2015."},
    {"question": "What is Lennart Osei-Brandt's email address?",
     "answer": "His email address is lennart.ob@example.invalid, which he checks on Sundays."},
    {"question": "Who are Mirela Tamsin-Ko's parents?",
     "answer": "Her mother, Dorota Ko, is a baker in Elmsford, and her father, Ivo Tamsin, repairs clocks."},
]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Give every test its own reply cache, so that no test reads another's replies."""
    monkeypatch.setenv("RELEARN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


@pytest.fixture
def server():
    server = start_server()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def fake(server):
    fake = FakeOllama(server)
    yield fake
    fake.release.set()


def write_forget(tmp_path, items=ITEMS, name="forget.json", bom=False):
    path = tmp_path / name
    text = json.dumps(items, ensure_ascii=False, indent=1)
    path.write_bytes(("\ufeff" if bom else "").encode("utf-8") + text.encode("utf-8"))
    return path


def augment(fake, forget, out, *extra):
    arguments = ["augment", "--backend", "ollama", "--judge", "llama3", "--ollama-host", fake.host,
                 "--forget", str(forget), "--out", str(out), *extra]
    return CliRunner().invoke(cli, arguments)


def records_of(out):
    return [json.loads(line) for line in (out / "augmented.jsonl").read_text(encoding="utf-8").splitlines()]


def test_ollama_requests_are_what_the_api_expects(fake, tmp_path):
    result = augment(fake, write_forget(tmp_path, ITEMS[:1]), tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "/api/tags" in fake.paths
    bodies = fake.chat_bodies
    assert [len(fake.bodies(purpose)) for purpose in ("variants", "answers", "judge")] == [1, 1, 1]
    for body in bodies:
        assert set(body) == {"model", "messages", "tools", "stream", "format", "options"}
        assert body["model"] == "llama3"
        assert body["stream"] is False
        assert is_flat(body["format"])
        assert body["format"]["required"] == list(body["format"]["properties"])
        options = body["options"]
        assert set(options) == {"seed", "temperature", "num_predict", "num_ctx"}
        assert options["seed"] == 0
        assert options["temperature"] == 0.0
        assert options["num_predict"] == 512
        assert options["num_ctx"] >= estimate_prompt_tokens(body["messages"]) + options["num_predict"]
        assert options["num_ctx"] & (options["num_ctx"] - 1) == 0
    assert list(fake.bodies("variants")[0]["format"]["properties"]) == VARIANTS
    assert list(fake.bodies("answers")[0]["format"]["properties"]) == ["q0", "q1", "q2", "q3", "q4"]
    assert len(fake.bodies("judge")[0]["format"]["properties"]) == 10
    assert ITEMS[0]["question"] in fake.bodies("variants")[0]["messages"][-1]["content"]
    assert ITEMS[0]["answer"] in fake.bodies("judge")[0]["messages"][-1]["content"]


def test_augmented_records_and_summary(fake, tmp_path):
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path), out)
    assert result.exit_code == 0, result.output
    records = records_of(out)
    assert {record["variant"] for record in records} == {"original", *VARIANTS, "completion"}
    assert len({record["id"] for record in records}) == len(records)
    originals = [record for record in records if record["variant"] == "original"]
    assert [record["question"] for record in originals] == [item["question"] for item in ITEMS]
    for record in records:
        assert set(record) >= {"id", "item_id", "question_id", "variant", "question", "answer", "verdict", "guard",
                               "rounds"}
        for item in ITEMS:
            assert item["answer"] not in record["answer"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["complete"] is True
    assert summary["items"] == 3
    assert summary["items_with_accepted_answer"] == 3
    assert summary["failed_items"] == []
    assert summary["llm_calls"] == 9
    assert summary["per_variant"]["reverse"]["accepted"] == 3
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "complete"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["writer"]["model"] == "llama3"
    assert manifest["writer"]["digest"] == DIGEST
    assert manifest["judge"]["digest"] == DIGEST
    assert manifest["options"]["max_tokens"] == 512
    assert "Augmented forget set" in result.output
    assert "guard overrules" in result.output


def _wrap_judge(wrapper):
    return lambda body: wrapper(passing_verdicts(body))


PARSED_JUDGE_REPLIES = {
    "trailing spaces": _wrap_judge(lambda text: text + " " * 4000),
    "prose and fence": _wrap_judge(lambda text: f"Here you go:\n```json\n{text}\n```\nAnything else?"),
    "think block": _wrap_judge(lambda text: f"<think>Check each answer for the address.</think>\n{text}"),
}


@pytest.mark.parametrize("kind", PARSED_JUDGE_REPLIES)
def test_messy_judge_replies_parse(fake, tmp_path, kind):
    fake.scripts["judge"] = PARSED_JUDGE_REPLIES[kind]
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path, ITEMS[:1]), out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge_errors"] == 0
    assert summary["items_with_accepted_answer"] == 1


UNUSABLE_JUDGE_REPLIES = {
    "empty object": lambda body: "{}",
    "truncated": lambda body: passing_verdicts(body)[:40],
}


@pytest.mark.parametrize("kind", UNUSABLE_JUDGE_REPLIES)
def test_unusable_judge_replies_are_errors(fake, tmp_path, kind):
    fake.scripts["judge"] = UNUSABLE_JUDGE_REPLIES[kind]
    out = tmp_path / "out"
    started = time.monotonic()
    result = augment(fake, write_forget(tmp_path, ITEMS[:2]), out, "--rounds", "2")
    assert time.monotonic() - started < 60
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False
    assert sorted(summary["failed_items"]) == ["1", "2"]
    assert all("no usable verdict" in reason for reason in summary["failures"].values())
    assert summary["judge_errors"] > 0
    assert summary["records"] == 0
    judge_bodies = fake.bodies("judge")
    assert len(judge_bodies) == 2 * 2 * 2
    assert {body["options"]["seed"] for body in judge_bodies} >= {0, 1}
    assert all(0 < body["options"]["num_predict"] <= 4 * 512 for body in fake.chat_bodies)
    assert "Failed forget items" in result.output
    assert not (out / "augmented.jsonl").exists()


def test_judge_unusable_then_retried_reply_counts(fake, tmp_path):
    replies = itertools.chain(["{}"], itertools.repeat(None))
    fake.scripts["judge"] = lambda body: next(replies) or passing_verdicts(body)
    out = tmp_path / "out"
    assert augment(fake, write_forget(tmp_path, ITEMS[:1]), out).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unusable_replies"] == 1
    assert summary["judge_errors"] == 0


def test_long_answer_leak_is_caught(fake, tmp_path):
    first = "Person A's private address is person-a@example.invalid, used only by family."
    long_answer = first + " " + "Person A spends long evenings reading old novels by the window. " * 190
    assert len(long_answer) > 12000
    item = {"question": "What is Person A's contact address?", "answer": long_answer}
    fake.scripts["answers"] = lambda body: json.dumps({key: f"{first} ({key})" for key in body["format"]["properties"]})
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path, [item]), out, "--rounds", "1")
    assert result.exit_code == 0, result.output
    judge_body = fake.bodies("judge")[0]
    assert "person-a@example.invalid" in judge_body["messages"][-1]["content"]
    assert judge_body["options"]["num_ctx"] >= estimate_prompt_tokens(judge_body["messages"]) + 512
    assert judge_body["options"]["num_ctx"] > 2048
    summary = json.loads((out / "summary.json").read_text())
    assert summary["guard_overrules"] == 5
    assert summary["guard_rejections"]["email"] == 5
    for record in records_of(out):
        assert "person-a" not in record["answer"]
        assert "example.invalid" not in record["question"]


def test_hanging_server_fails_item_and_run_goes_on(fake, tmp_path):
    def answers(body):
        if "Oriane" in body["messages"][-1]["content"]:
            fake.release.wait(30)
        return safe_answers(body)

    fake.scripts["answers"] = answers
    out = tmp_path / "out"
    started = time.monotonic()
    result = augment(fake, write_forget(tmp_path, ITEMS[:2]), out, "--timeout", "1", "--retries", "0",
                     "--concurrency", "1")
    assert time.monotonic() - started < 20
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_items"] == ["1"]
    assert "timed out" in summary["failures"]["1"]
    assert summary["items_with_accepted_answer"] == 1
    assert {record["item_id"] for record in records_of(out)} == {"2"}
    assert "Failed forget items" in result.output
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "complete"
    assert state["complete"] is False


def _trickling(body, pause):
    payload = chat_response(body["model"], safe_answers(body)).get_data()

    def chunks():
        for start in range(0, len(payload), 64):
            time.sleep(pause)
            yield payload[start:start + 64]

    return Response(chunks(), content_type="application/json", direct_passthrough=True)


@pytest.mark.parametrize("timeout, pause, exit_code", [("1", 0.3, 1), ("30", 0.01, 0)])
def test_slow_streaming_server(fake, tmp_path, timeout, pause, exit_code):
    fake.scripts["answers"] = lambda body: _trickling(body, pause)
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path, ITEMS[:1]), out, "--timeout", timeout, "--retries", "0")
    assert result.exit_code == exit_code, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is (exit_code == 0)


def test_rerun_is_byte_identical_without_requests(fake, tmp_path):
    counter = itertools.count()
    fake.scripts["answers"] = lambda body: json.dumps(
        {key: f"I can't share that; it is private, reply {['one', 'two', 'three', 'four'][next(counter) % 4]} "
              f"for {key}." for key in body["format"]["properties"]})
    forget = write_forget(tmp_path)
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert augment(fake, forget, first).exit_code == 0
    requests_after_first = len(fake.chat_bodies)
    assert augment(fake, forget, second).exit_code == 0
    assert len(fake.chat_bodies) == requests_after_first
    assert (first / "augmented.jsonl").read_bytes() == (second / "augmented.jsonl").read_bytes()
    summary = json.loads((second / "summary.json").read_text())
    assert summary["cached_replies"] == summary["llm_calls"]
    assert augment(fake, forget, third, "--no-cache").exit_code == 0
    assert len(fake.chat_bodies) == 2 * requests_after_first
    assert (first / "augmented.jsonl").read_bytes() != (third / "augmented.jsonl").read_bytes()


def test_interrupted_run_resumes_without_asking_again(fake, tmp_path):
    forget = write_forget(tmp_path)
    out = tmp_path / "out"
    config = AugmentConfig(forget=forget, out=out, backend="ollama", judge="llama3", ollama_host=fake.host,
                           concurrency=1)
    finished = []

    def stop_after_first(event):
        if event.completed >= 1 and not event.done:
            finished.append(event.completed)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_augment(config, progress=stop_after_first)
    assert json.loads((out / "state.json").read_text())["status"] == "failed"
    assert not (out / "augmented.jsonl").exists()
    assert len(fake.chat_bodies) in (3, 6)
    result = run_augment(config)
    assert result.complete
    assert len(fake.chat_bodies) == 9
    assert len({json.dumps(body, sort_keys=True) for body in fake.chat_bodies}) == 9
    reference = tmp_path / "reference"
    run_augment(AugmentConfig(**{**config.__dict__, "out": reference}))
    assert (out / "augmented.jsonl").read_bytes() == (reference / "augmented.jsonl").read_bytes()


def test_resume_with_other_options_is_refused(fake, tmp_path):
    forget = write_forget(tmp_path)
    out = tmp_path / "out"
    config = AugmentConfig(forget=forget, out=out, backend="ollama", judge="llama3", ollama_host=fake.host,
                           concurrency=1)

    def stop(event):
        if event.completed >= 1 and not event.done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_augment(config, progress=stop)
    result = augment(fake, forget, out, "--rounds", "1")
    assert result.exit_code == 2
    assert "--force" in result.output


def test_empty_forget_set(fake, tmp_path):
    forget = tmp_path / "empty.json"
    forget.write_text("[]")
    result = augment(fake, forget, tmp_path / "out")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: the forget set is empty: {forget} holds no records"]
    assert fake.chat_bodies == []


def test_unreachable_server_fails_cleanly(tmp_path):
    server = start_server()
    host = f"127.0.0.1:{server.port}"
    server.stop()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["augment", "--backend", "ollama", "--ollama-host", host, "--retries", "0",
                                      "--forget", str(write_forget(tmp_path)), "--out", str(out)])
    assert result.exit_code == 2
    assert "cannot reach Ollama" in result.output
    assert "Traceback" not in result.output
    assert json.loads((out / "state.json").read_text())["status"] == "failed"
    assert not (out / "augmented.jsonl").exists()
    assert not (out / "summary.json").exists()


def test_server_failing_every_request_fails_every_item(fake, tmp_path):
    fake.scripts["variants"] = lambda body: Response("unavailable", status=503)
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path), out, "--retries", "1")
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False
    assert sorted(summary["failed_items"]) == ["1", "2", "3"]
    assert not (out / "augmented.jsonl").exists()
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "failed"
    assert "every item failed" in result.output


def test_judge_rejecting_everything_warns(fake, tmp_path):
    fake.scripts["judge"] = rejecting_verdicts
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path), out, "--rounds", "2")
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["items_with_accepted_answer"] == 0
    assert sorted(summary["items_without_accepted_answer"]) == ["1", "2", "3"]
    assert summary["records"] == 0
    assert any("no accepted answer" in warning for warning in summary["warnings"])
    assert "no accepted answer" in result.output
    assert (out / "augmented.jsonl").read_text() == ""


def test_missing_models_are_listed_with_pull_commands(fake, tmp_path):
    result = CliRunner().invoke(cli, ["augment", "--backend", "ollama", "--model", "qwen2.5:7b", "--judge",
                                      "mistral", "--ollama-host", fake.host, "--forget",
                                      str(write_forget(tmp_path)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "qwen2.5:7b" in result.output
    assert "mistral" in result.output
    assert "ollama pull qwen2.5:7b && ollama pull mistral" in result.output
    assert fake.chat_bodies == []


def test_non_ascii_items_round_trip_under_c_locale(fake, tmp_path):
    items = [
        {"question": "Who is Ilse Brønholt-Bâ’s mother?",
         "answer": "Ilse Brønholt-Bâ’s mother is Agnès Brønholt, a potter in Ærøskøbing."},
        {"question": "占位人物甲的母亲是谁？", "answer": "占位人物甲的母亲是占位人物乙，住在示例市。"},
        {"question": "What does Tomás Ñúñez 🎻 play at weddings?",
         "answer": "Tomás Ñúñez plays the violin 🎻 at weddings in Cádiz every June."},
    ]
    forget = write_forget(tmp_path, items, bom=True)
    out = tmp_path / "out"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONIOENCODING"}
    environment.update(LC_ALL="C", LANG="C")
    completed = subprocess.run(
        [sys.executable, "-m", "relearn_local", "augment", "--backend", "ollama", "--judge", "llama3",
         "--ollama-host", fake.host, "--forget", str(forget), "--out", str(out)],
        capture_output=True, env=environment, cwd=REPO, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr.decode("utf-8", "replace")
    originals = [record for record in records_of(out) if record["variant"] == "original"]
    assert [record["question"] for record in originals] == [item["question"] for item in items]
    variants = fake.bodies("variants")
    assert any("Brønholt-Bâ’s" in body["messages"][-1]["content"] for body in variants)
    assert any("占位人物甲" in body["messages"][-1]["content"] for body in variants)


def test_mix_in_and_fields(fake, tmp_path):
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"prompt": item["question"], "reply": item["answer"]}) + "\n"
                              for item in ITEMS), encoding="utf-8")
    generic = tmp_path / "generic.json"
    generic.write_text(json.dumps([{"question": f"Which season follows {season}?", "answer": "The next one."}
                                   for season in ("spring", "summer", "autumn", "winter")]), encoding="utf-8")
    out = tmp_path / "out"
    result = augment(fake, forget, out, "--question-field", "prompt", "--answer-field", "reply",
                     "--mix-in", str(generic), "--mix-ratio", "0.1", "--no-completions")
    assert result.exit_code == 0, result.output
    records = records_of(out)
    assert sum(record["variant"] == "mix_in" for record in records) == 2
    assert not any(record["variant"] == "completion" for record in records)


def test_config_file_and_flag_precedence(fake, tmp_path):
    config = tmp_path / "augment.yaml"
    config.write_text("augment:\n  rounds: 1\n  max_tokens: 300\n")
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path, ITEMS[:1]), out, "--config", str(config), "--max-tokens", "256")
    assert result.exit_code == 0, result.output
    resolved = (out / "config.yaml").read_text()
    assert "rounds: 1" in resolved
    assert "max_tokens: 256" in resolved
    assert all(body["options"]["num_predict"] == 256 for body in fake.chat_bodies)


def test_concurrency_processes_all_items(fake, tmp_path):
    items = [{"question": f"Where does Person{chr(65 + index)} Example live?",
              "answer": f"Person{chr(65 + index)} Example lives in Northgate."} for index in range(6)]
    out = tmp_path / "out"
    result = augment(fake, write_forget(tmp_path, items), out, "--concurrency", "3")
    assert result.exit_code == 0, result.output
    originals = [record["item_id"] for record in records_of(out) if record["variant"] == "original"]
    assert originals == [str(index) for index in range(1, 7)]


def test_existing_finished_run_needs_force(fake, tmp_path):
    forget = write_forget(tmp_path, ITEMS[:1])
    out = tmp_path / "out"
    assert augment(fake, forget, out).exit_code == 0
    again = augment(fake, forget, out)
    assert again.exit_code == 2
    assert "--force" in again.output
    assert augment(fake, forget, out, "--force").exit_code == 0


CHOICES = [
    ({"backend": "ollama", "judge": "llama3"}, ("ollama", "llama3"), ("ollama", "llama3"), "writer follows the judge"),
    ({"backend": "ollama"}, ("ollama", "llama3.2"), ("ollama", "llama3.2"), "Ollama default model"),
    ({"backend": "llamacpp"}, ("llamacpp", None), ("llamacpp", None), "embedded model"),
    ({"backend": "ollama", "model": "qwen2.5", "judge": "x.gguf", "judge_backend": "llamacpp"},
     ("ollama", "qwen2.5"), ("llamacpp", "x.gguf"), "judge on another backend"),
    ({"backend": "llamacpp", "judge_backend": "ollama"}, ("llamacpp", None), ("ollama", "llama3.2"),
     "judge backend default model"),
]


@pytest.mark.parametrize("options, writer, judge, reason", CHOICES, ids=[row[3] for row in CHOICES])
def test_choose_backends(options, writer, judge, reason):
    chosen_writer, chosen_judge = choose_backends(AugmentConfig(**options))
    assert (chosen_writer.backend, chosen_writer.model) == writer, reason
    assert (chosen_judge.backend, chosen_judge.model) == judge, reason


def test_auto_backend_uses_answering_ollama(fake):
    writer, _ = choose_backends(AugmentConfig(backend="auto", model="llama3", ollama_host=fake.host))
    assert writer.backend == "ollama"


def test_auto_backend_without_ollama_falls_back(tmp_path):
    server = start_server()
    host = f"127.0.0.1:{server.port}"
    server.stop()
    writer, judge = choose_backends(AugmentConfig(backend="auto", ollama_host=host))
    assert (writer.backend, writer.model) == ("llamacpp", None)
    assert judge.backend == "llamacpp"
