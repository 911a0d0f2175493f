"""Compare the augment pipeline with a one-call-per-step baseline on the same backend, model and items.

The pipeline asks for the four variants in one call, answers several
questions per call and judges several answers per call. The baseline makes
one call per variant, one per answer and one per check (4 + 5 + 5 = 14 calls
per item), with a single round and no template fallback. Items alternate
between the two, so that a change in machine load affects both alike.

Run (a few minutes on a laptop CPU with the embedded Gemma 3 270M):

    .venv/bin/python benchmarks/augment_bench.py --items 3

Prints calls per item, items per minute and the share of items with an
accepted answer for both, and the ratios. Replies are not cached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relearn_local.augment.backend_choice import LLAMACPP_CONTEXTS, BackendChoice  # noqa: E402
from relearn_local.augment.calls import CallSettings  # noqa: E402
from relearn_local.augment.config import AugmentConfig  # noqa: E402
from relearn_local.augment.item import ItemContext, process_item  # noqa: E402
from relearn_local.backends import get_backend  # noqa: E402
from relearn_local.data import load_qa_set  # noqa: E402

BASELINE_OPTIONS = {"variants_per_call": 1, "answers_per_call": 1, "verdicts_per_call": 1, "rounds": 1,
                    "fallback": "none"}


def _context(config: AugmentConfig, backend) -> ItemContext:
    settings = CallSettings(temperature=config.temperature, seed=config.seed, max_tokens=config.max_tokens,
                            timeout=config.timeout, parse_retries=config.parse_retries)
    return ItemContext(config, backend, backend, settings, settings)


def _open(choice: BackendChoice, n_ctx: int):
    options = {"n_ctx": n_ctx, "contexts": LLAMACPP_CONTEXTS} if choice.backend == "llamacpp" else {}
    return get_backend(choice.backend, model=choice.model, **options)


def _summarize(name: str, outcomes: list, seconds: float) -> dict:
    items = len(outcomes)
    calls = [outcome.stats.llm_calls for outcome in outcomes]
    with_answer = sum(1 for outcome in outcomes if outcome.ok and outcome.accepted)
    with_writer_answer = sum(1 for outcome in outcomes if outcome.ok
                             and any(candidate.source == "writer" for candidate in outcome.accepted))
    accepted = sum(len(outcome.accepted) for outcome in outcomes)
    return {
        "pipeline": name,
        "items": items,
        "failed_items": sum(1 for outcome in outcomes if not outcome.ok),
        "calls_per_item": statistics.fmean(calls) if calls else 0.0,
        "items_per_minute": items / seconds * 60 if seconds else 0.0,
        "seconds": seconds,
        "share_items_with_accepted_answer": with_answer / items if items else 0.0,
        "share_items_with_writer_answer": with_writer_answer / items if items else 0.0,
        "accepted_answers": accepted,
        "template_answers": sum(1 for outcome in outcomes for candidate in outcome.accepted
                                if candidate.source == "template"),
        "output_tokens_per_item": statistics.fmean(o.stats.completion_tokens for o in outcomes) if items else 0.0,
        "guard_overrules": sum(outcome.stats.guard_overrules for outcome in outcomes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forget", type=Path, default=REPO / "examples" / "forget.json")
    parser.add_argument("--items", type=int, default=3, help="forget items to run (from the start of the file)")
    parser.add_argument("--offset", type=int, default=0, help="first forget item to run")
    parser.add_argument("--backend", default="llamacpp", choices=["llamacpp", "ollama"])
    parser.add_argument("--model", default=None, help="model name or GGUF path; the embedded Gemma 3 270M by default")
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--json-out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    pairs = load_qa_set(args.forget).pairs[args.offset:args.offset + args.items]
    pipeline_config = AugmentConfig(forget=args.forget, backend=args.backend, model=args.model)
    baseline_config = dataclasses.replace(pipeline_config, **BASELINE_OPTIONS)
    choice = BackendChoice(args.backend, args.model)
    runs = {
        "pipeline": (_context(pipeline_config, _open(choice, args.n_ctx)), [], 0.0),
        "baseline": (_context(baseline_config, _open(choice, args.n_ctx)), [], 0.0),
    }
    elapsed = {name: 0.0 for name in runs}
    for position, pair in enumerate(pairs):
        order = ["pipeline", "baseline"] if position % 2 == 0 else ["baseline", "pipeline"]
        for name in order:
            context, outcomes, _ = runs[name]
            started = time.monotonic()
            outcomes.append(process_item(args.offset + position, pair, context))
            elapsed[name] += time.monotonic() - started
            print(f"{name:8s} item {pair.id}: {outcomes[-1].stats.llm_calls} calls, "
                  f"{time.monotonic() - started:.1f} s", flush=True)
    results = [_summarize(name, runs[name][1], elapsed[name]) for name in runs]
    for context, _, _ in runs.values():
        context.writer.close()
    _print(results)
    if args.json_out:
        args.json_out.write_text(json.dumps({"backend": args.backend, "model": args.model or "gemma3-270m",
                                             "items": len(pairs), "results": results}, indent=2) + "\n")
    return 0


def _print(results: list[dict]) -> None:
    keys = ["calls_per_item", "items_per_minute", "share_items_with_accepted_answer",
            "share_items_with_writer_answer", "output_tokens_per_item", "template_answers", "guard_overrules",
            "failed_items", "seconds"]
    print(f"\n{'':34s}" + "".join(f"{result['pipeline']:>12s}" for result in results))
    for key in keys:
        print(f"{key:34s}" + "".join(f"{result[key]:12.3f}" if isinstance(result[key], float)
                                     else f"{result[key]:12d}" for result in results))
    pipeline, baseline = results
    if baseline["items_per_minute"]:
        print(f"\nspeed-up (items per minute, pipeline / baseline): "
              f"{pipeline['items_per_minute'] / baseline['items_per_minute']:.2f}x")
    print(f"calls per item: pipeline {pipeline['calls_per_item']:.2f}, baseline {baseline['calls_per_item']:.2f} "
          "(targets: pipeline at most 4, items per minute at least 2x, share of items with an accepted answer "
          "at least the baseline's)")


if __name__ == "__main__":
    raise SystemExit(main())
