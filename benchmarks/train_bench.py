"""Benchmark the trainer against the reference implementation's pattern, on the same data and steps.

Both sides train one epoch of ReLearn (forget CE + retain CE + KL on the
retain set) with LoRA rank 32 on Gemma 3 270M. They use the same slice of
the KnowUnDo privacy pairs, batch size and number of optimizer steps:

- this trainer: batches grouped by length and padded to their longest
  member, the output head run on needed positions only, and the reference
  model taken as the same model with the adapter disabled;
- the baseline: every sample padded to 512 tokens, full logits over every
  position, and a second full copy of the model as reference (the pattern of
  the ReLearn authors' training code).

Each side runs in its own process, so peak memory (maximum resident set
size) is measured per side. The script prints seconds per epoch, CPU
seconds, tokens per second and peak memory, and the ratios against the
targets (at least 3x faster, at most 0.7x the peak memory).

On a machine with a CUDA GPU it also compares Unsloth 4-bit with
transformers+bitsandbytes 4-bit tokens per second on the same data
(target: Unsloth at least 1.5x); without one it prints that this part was
skipped.

Usage:
  .venv/bin/python benchmarks/train_bench.py                  # 8 forget + 8 retain pairs, batch 2
  .venv/bin/python benchmarks/train_bench.py --forget-items 40 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "knowundo-privacy"
PAD_TO = 512
sys.path.insert(0, str(REPO))


def load_slice(forget_items: int, retain_items: int) -> tuple[list[dict], list[dict]]:
    forget = json.loads((SHARED / "unlearn_train.json").read_text(encoding="utf-8"))[:forget_items]
    retain = json.loads((SHARED / "retention_train.json").read_text(encoding="utf-8"))[:retain_items]
    as_pairs = lambda rows: [{"question": row["text"], "answer": row["labels"]} for row in rows]  # noqa: E731
    return as_pairs(forget), as_pairs(retain)


def write_inputs(folder: Path, forget: list[dict], retain: list[dict]) -> tuple[Path, Path]:
    augmented = folder / "augmented.json"
    augmented.write_text(json.dumps(forget), encoding="utf-8")
    retain_path = folder / "retain.json"
    retain_path.write_text(json.dumps(retain), encoding="utf-8")
    return augmented, retain_path


def run_ours(args: argparse.Namespace, folder: Path, backend: str = "transformers",
             quantization: str = "none") -> dict:
    """Train one epoch with this project's trainer; return timings."""
    from relearn_local.config import build_config
    from relearn_local.train.config import TrainConfig
    from relearn_local.train.stage import run_train

    forget, retain = load_slice(args.forget_items, args.retain_items)
    augmented, retain_path = write_inputs(folder, forget, retain)
    config = build_config(TrainConfig, None, {
        "base": args.base, "out": folder / "run", "augmented": augmented, "retain": retain_path,
        "batch_size": args.batch_size, "epochs": 1, "max_length": PAD_TO, "lora_rank": 32, "lora_alpha": 32,
        "learning_rate": 1e-5, "backend": backend, "quantization": quantization, "save_steps": 100000,
        "seed": 0, "min_forget_coverage": 0.0,
    })
    result = run_train(config)
    rows = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "steps": result.steps,
        "epoch_seconds": sum(row["seconds"] for row in rows),
        "tokens": sum(row["tokens"] for row in rows),
        "final_loss": rows[-1]["loss"],
    }


def run_baseline(args: argparse.Namespace) -> dict:
    """Train one epoch the way the reference implementation does: fixed 512-token padding and a model copy."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relearn_local.chat_formats import encode_example, get_chat_format
    from relearn_local.models import resolve_base

    hf_path = str(resolve_base(args.base, need_hf=True).hf_path)
    tokenizer = AutoTokenizer.from_pretrained(hf_path)
    chat_format = get_chat_format("gemma")
    forget, retain = load_slice(args.forget_items, args.retain_items)

    def padded(pair: dict) -> tuple[list[int], list[int], list[int]]:
        example = encode_example(tokenizer, chat_format, pair["question"], pair["answer"])
        ids, labels = example.input_ids[:PAD_TO], example.labels[:PAD_TO]
        pad = PAD_TO - len(ids)
        return ids + [tokenizer.pad_token_id] * pad, labels + [-100] * pad, [1] * len(ids) + [0] * pad

    def batch_of(rows: list[tuple]) -> dict:
        return {name: torch.tensor([row[index] for row in rows])
                for index, name in enumerate(("input_ids", "labels", "attention_mask"))}

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(hf_path, dtype=torch.float32).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=32, lora_dropout=0.05, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01)
    model.train()
    steps, tokens, seconds = 0, 0, 0.0
    for start in range(0, len(forget), args.batch_size):
        started = time.perf_counter()
        # The reference pairs forget item i with retain item i modulo the retain size.
        forget_rows = [padded(pair) for pair in forget[start:start + args.batch_size]]
        retain_rows = [padded(retain[index % len(retain)])
                       for index in range(start, start + len(forget_rows))]
        forget_batch, retain_batch = batch_of(forget_rows), batch_of(retain_rows)
        forget_loss = model(**forget_batch).loss
        retain_out = model(**retain_batch)
        with torch.no_grad():
            reference_logits = reference(**retain_batch).logits
        vocabulary = retain_out.logits.shape[-1]
        kl = F.kl_div(F.log_softmax(retain_out.logits, -1).view(-1, vocabulary),
                      F.log_softmax(reference_logits, -1).view(-1, vocabulary), reduction="batchmean",
                      log_target=True)
        loss = forget_loss + retain_out.loss + kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
        steps += 1
        tokens += int(forget_batch["attention_mask"].sum() + retain_batch["attention_mask"].sum())
        del forget_loss, retain_out, reference_logits, kl, loss
    return {"steps": steps, "epoch_seconds": seconds, "tokens": tokens}


def child(args: argparse.Namespace) -> None:
    started_cpu = time.process_time()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as scratch:
        if args.role == "ours":
            figures = run_ours(args, Path(scratch))
        elif args.role in ("unsloth", "bitsandbytes"):
            backend = "unsloth" if args.role == "unsloth" else "transformers"
            figures = run_ours(args, Path(scratch), backend=backend, quantization="4bit")
        else:
            figures = run_baseline(args)
    figures["cpu_seconds"] = time.process_time() - started_cpu
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        import torch

        if torch.cuda.is_available():
            figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    Path(args.result).write_text(json.dumps(figures), encoding="utf-8")


def measure(role: str, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = handle.name
    command = [sys.executable, __file__, "--role", role, "--result", result_path,
               "--forget-items", str(args.forget_items), "--retain-items", str(args.retain_items),
               "--batch-size", str(args.batch_size), "--base", args.base]
    print(f"running {role} ...", flush=True)
    completed = subprocess.run(command, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True)
    if completed.returncode != 0:
        print(completed.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{role} failed with exit code {completed.returncode}")
    figures = json.loads(Path(result_path).read_text(encoding="utf-8"))
    os.unlink(result_path)
    return figures


def report(name: str, figures: dict) -> None:
    rate = figures["tokens"] / figures["epoch_seconds"] if figures["epoch_seconds"] else float("nan")
    print(f"{name:<32} steps {figures['steps']:>3.0f}  epoch {figures['epoch_seconds']:8.1f} s  "
          f"process CPU {figures['cpu_seconds']:8.1f} s  {rate:7.1f} real tokens/s  "
          f"peak RSS {figures['peak_rss_mib']:8.0f} MiB"
          + (f"  peak CUDA {figures['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in figures else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forget-items", type=int, default=8, help="forget pairs in the slice (one epoch)")
    parser.add_argument("--retain-items", type=int, default=8, help="retain pairs in the slice")
    parser.add_argument("--batch-size", type=int, default=2, help="micro-batch size for both trainers")
    parser.add_argument("--base", default="gemma3-270m", help="base model (default: the embedded Gemma 3 270M)")
    parser.add_argument("--role", choices=["ours", "baseline", "unsloth", "bitsandbytes"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args)
        return
    if not SHARED.exists():
        raise SystemExit(f"KnowUnDo data not found at {SHARED}")
    print(f"data: {args.forget_items} forget + {args.retain_items} retain KnowUnDo privacy pairs, "
          f"batch {args.batch_size}, one epoch, base {args.base}, CPU threads {os.cpu_count()}")
    # This trainer runs before and after the baseline, and the two runs are averaged, so that load
    # from other processes drifting during the benchmark does not favour either side.
    first = measure("ours", args)
    baseline = measure("baseline", args)
    ours_runs = [first, measure("ours", args)]
    ours = {key: (ours_runs[0][key] + ours_runs[1][key]) / 2 for key in ours_runs[0]}
    report("this trainer, run 1", ours_runs[0])
    report("this trainer, run 2", ours_runs[1])
    report("baseline (pad 512, model copy)", baseline)
    speedup = baseline["epoch_seconds"] / ours["epoch_seconds"]
    cpu_speedup = baseline["cpu_seconds"] / ours["cpu_seconds"]
    memory = ours["peak_rss_mib"] / baseline["peak_rss_mib"]
    print(f"speed-up per epoch: {speedup:.2f}x (target >= 3x: {'met' if speedup >= 3 else 'missed'}); "
          f"process CPU time ratio {cpu_speedup:.2f}x")
    print(f"peak memory ratio: {memory:.2f}x (target <= 0.7x: {'met' if memory <= 0.7 else 'missed'})")
    gpu_comparison(args)


def gpu_comparison(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        print("GPU comparison (Unsloth 4-bit vs transformers+bitsandbytes 4-bit): skipped, no CUDA GPU here")
        return
    bitsandbytes = measure("bitsandbytes", args)
    report("transformers+bitsandbytes 4-bit", bitsandbytes)
    try:
        unsloth = measure("unsloth", args)
    except SystemExit as exc:
        print(f"GPU comparison: unsloth run failed ({exc}); is unsloth installed?")
        return
    report("unsloth 4-bit", unsloth)
    ratio = (unsloth["tokens"] / unsloth["epoch_seconds"]) / (bitsandbytes["tokens"] / bitsandbytes["epoch_seconds"])
    print(f"unsloth tokens/s ratio: {ratio:.2f}x (target >= 1.5x: {'met' if ratio >= 1.5 else 'missed'})")


if __name__ == "__main__":
    main()
