"""Measure ReLearn against gradient ascent and NPO on KnowUnDo (privacy), end to end.

Gemma 3 270M never saw the KnowUnDo people, so the benchmark first teaches it
their facts (inject), then unlearns the forget facts three ways at the same
training budget (same optimizer steps, batch size and learning rate):

- relearn: the augmented safe answers (augment with the embedded writer and
  judge), retain CE and KL on the retain split;
- ga: gradient ascent on the original forget answers;
- npo: negative preference optimisation with retain CE.

Split, taken from ../shared/data/knowundo-privacy in file order (records of one
person sit together, so a prefix keeps whole people):

- forget: the first --forget-items pairs of unlearn_train.json;
- retain: the first 2 x --retain-items pairs of retention_train.json, even
  positions to retain_train (used in training), odd ones to retain_dev (held
  out; KRR is measured on it).

Every stage runs as its own `relearn-local` process, so wall time and peak
resident memory are measured per stage. Finished stages are recorded in
OUT/stages.json and skipped when the script is run again, so an interrupted
benchmark resumes. The script prints a markdown table and writes it to
OUT/results.md, with every figure in OUT/results.json.

Usage:
  .venv/bin/python benchmarks/knowundo.py                         # 16 forget, 16+16 retain
  .venv/bin/python benchmarks/knowundo.py --forget-items 40 --retain-items 40 --out runs/knowundo-40
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "knowundo-privacy"
METHODS = ("relearn", "ga", "npo")


def cli() -> list[str]:
    script = Path(sys.executable).with_name("relearn-local")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "relearn_local"]


def write_split(folder: Path, forget_items: int, retain_items: int) -> dict[str, Path]:
    if not SHARED.is_dir():
        raise SystemExit(f"KnowUnDo data not found at {SHARED}; put unlearn_train.json and retention_train.json there")
    forget = json.loads((SHARED / "unlearn_train.json").read_text(encoding="utf-8"))
    retain = json.loads((SHARED / "retention_train.json").read_text(encoding="utf-8"))
    if forget_items > len(forget) or 2 * retain_items > len(retain):
        raise SystemExit(f"requested {forget_items} forget and 2 x {retain_items} retain pairs, but the files "
                         f"contain {len(forget)} and {len(retain)}; pass smaller --forget-items or --retain-items")
    pairs = lambda rows: [{"question": row["text"], "answer": row["labels"]} for row in rows]  # noqa: E731
    retain_slice = retain[: 2 * retain_items]
    parts = {
        "forget": pairs(forget[:forget_items]),
        "retain_train": pairs(retain_slice[0::2]),
        "retain_dev": pairs(retain_slice[1::2]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in parts.items():
        path = folder / f"{name}.json"
        text = json.dumps(rows, indent=1, ensure_ascii=False)
        # An unchanged split is not rewritten, so a resumed benchmark reads the same files.
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths[name] = path
    return paths


class Ledger:
    """Record of finished stages in OUT/stages.json, with wall time, CPU time and peak memory."""

    def __init__(self, path: Path):
        self.path = path
        self.stages: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, args: list[str], log: Path) -> dict:
        if name in self.stages:
            print(f"[{name}] done earlier ({self.stages[name]['wall_s']:.0f} s), skipped", flush=True)
            return self.stages[name]
        command = cli() + args
        print(f"[{name}] {shlex.join(command)}", flush=True)
        started = time.monotonic()
        with log.open("w", encoding="utf-8") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
            # wait4 gives the child's own rusage: its peak RSS, not the benchmark's.
            _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
            raise SystemExit(f"[{name}] failed with exit code {code}; log {log}:\n{tail}")
        figures = {
            "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "command": shlex.join(command),
        }
        self.stages[name] = figures
        self.path.write_text(json.dumps(self.stages, indent=2))
        print(f"[{name}] {figures['wall_s']:.0f} s, peak {figures['peak_rss_mib']} MiB", flush=True)
        return figures


def train_steps(run_dir: Path) -> int:
    return int(json.loads((run_dir / "train_summary.json").read_text())["steps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "knowundo")
    parser.add_argument("--forget-items", type=int, default=16)
    parser.add_argument("--retain-items", type=int, default=16,
                        help="pairs in each of retain_train and retain_dev")
    parser.add_argument("--inject-epochs", type=float, default=10)
    parser.add_argument("--epochs", type=float, default=5, help="ReLearn epochs; GA and NPO get its step count")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=4,
                        help="the same warm-up for every method (the trainer's default depends on epoch length)")
    parser.add_argument("--augment-rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods to train and evaluate (relearn always runs: it sets the budget)")
    args = parser.parse_args()
    methods = [method for method in METHODS if method in args.methods.split(",")]
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    if "relearn" not in methods:
        methods.insert(0, "relearn")

    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    split = write_split(out / "data", args.forget_items, args.retain_items)
    ledger = Ledger(out / "stages.json")
    model = out / "inject" / "model"
    common_eval = ["--forget", str(split["forget"]), "--retain", str(split["retain_dev"]),
                   "--max-new-tokens", str(args.max_new_tokens), "--force"]

    ledger.run("inject", ["inject", "--data", str(split["forget"]), "--data", str(split["retain_train"]),
                          "--data", str(split["retain_dev"]), "--epochs", str(args.inject_epochs),
                          "--batch-size", str(args.batch_size), "--out", str(out / "inject"), "--force"],
               logs / "inject.log")
    ledger.run("eval-injected", ["evaluate", "--model", str(model), "--out", str(out / "eval-injected")]
               + common_eval, logs / "eval-injected.log")
    ledger.run("augment", ["augment", "--forget", str(split["forget"]), "--backend", "llamacpp",
                           "--rounds", str(args.augment_rounds), "--out", str(out / "augment"), "--force"],
               logs / "augment.log")

    budget = ["--learning-rate", str(args.learning_rate), "--batch-size", str(args.batch_size),
              "--warmup-steps", str(args.warmup_steps),
              "--base", str(model), "--retain", str(split["retain_train"]), "--force"]
    ledger.run("train-relearn", ["train", "--method", "relearn", "--augmented", str(out / "augment"),
                                 "--epochs", str(args.epochs), "--out", str(out / "train-relearn")] + budget,
               logs / "train-relearn.log")
    steps = train_steps(out / "train-relearn")
    # The baselines train on the forget pairs only, so they need more epochs for
    # the same step count. The schedule then spans exactly those steps.
    steps_per_epoch = math.ceil(args.forget_items / args.batch_size)
    baseline_epochs = steps / steps_per_epoch
    for method in methods[1:]:
        ledger.run(f"train-{method}", ["train", "--method", method, "--forget", str(split["forget"]),
                                       "--epochs", f"{baseline_epochs:g}", "--max-steps", str(steps),
                                       "--out", str(out / f"train-{method}")] + budget,
                   logs / f"train-{method}.log")
    for method in methods:
        ledger.run(f"eval-{method}", ["evaluate", "--model", str(model), "--adapter", str(out / f"train-{method}"),
                                      "--out", str(out / f"eval-{method}")] + common_eval,
                   logs / f"eval-{method}.log")

    rows = {"injected": out / "eval-injected"} | {m: out / f"eval-{m}" for m in methods}
    summaries = {name: json.loads((folder / "SUMMARY.json").read_text()) for name, folder in rows.items()}
    steps_by_method = {m: train_steps(out / f"train-{m}") for m in methods}
    augment = json.loads((out / "augment" / "summary.json").read_text())
    result = {
        "split": {name: len(json.loads(path.read_text())) for name, path in split.items()},
        "settings": vars(args) | {"out": str(out), "steps": steps_by_method},
        "augment": {key: augment.get(key) for key in ("items", "items_with_accepted_answer", "records", "answers",
                                                      "completions", "llm_calls_per_item")},
        "metrics": summaries,
        "stages": ledger.stages,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    table = render(result)
    (out / "results.md").write_text(table)
    print(table)
    return 0


def render(result: dict) -> str:
    def cell(value) -> str:
        return "N/A" if value is None else f"{value:.3f}"

    sources = next(iter(result["metrics"].values()))
    lines = [
        f"Split: {result['split']['forget']} forget, {result['split']['retain_train']} retain_train, "
        f"{result['split']['retain_dev']} retain_dev pairs. Steps: "
        + ", ".join(f"{m} {n}" for m, n in result["settings"]["steps"].items())
        + f". NLI: {sources.get('nli_source')}; entities: {sources.get('entity_extractor')} "
        f"with {sources.get('embedding_model')}.",
        "",
        "| model | KFR | KRR | LS forget | LS retain | ROUGE-L forget | ROUGE-L retain | PPL forget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in result["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(cell(summary.get(key)) for key in (
            "KFR", "KRR", "LS_F", "LS_R", "RougeL_recall_F", "RougeL_recall_R", "PPL_F")) + " |")
    lines += ["", "| stage | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|"]
    for name, figures in result["stages"].items():
        lines.append(f"| {name} | {figures['wall_s']:.0f} | {figures['cpu_s']:.0f} | {figures['peak_rss_mib']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
