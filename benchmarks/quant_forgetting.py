"""Does the forgetting survive quantization? Answer every forget and retain question with each GGUF type.

Input: an f16 export (`relearn-local export --quant f16 --out DIR`, which
keeps DIR/merged) and the original forget and retain sets. For each variant
the script quantizes the f16 GGUF with llama-cpp-python's binding, answers
every question greedily with Gemma's turn format, and counts with the leak
guard:

- forget answers that contain a sensitive span of the original answer
  (fewer is better: a forgotten fact came back);
- retain answers that contain a span of their original answer (more is
  better: the kept knowledge is still there).

Variants: the plain types (f16, q4_k_m, q5_k_m, q6_k, q8_0); q4_k_m and
q5_k_m with an importance matrix computed from the merged model's inputs on
the forget and retain texts; q4_k_m with the attention or the feed-forward
tensors kept at q8_0.

Usage:
  .venv/bin/python benchmarks/quant_forgetting.py --export DIR --forget F.json --retain R.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relearn_local.augment.leak_guard import LeakGuard  # noqa: E402
from relearn_local.chat_formats import get_chat_format  # noqa: E402
from relearn_local.data import load_qa_set  # noqa: E402

# Hugging Face Gemma module names and the GGUF tensor names llama.cpp gives them.
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
VARIANTS: dict[str, dict[str, Any]] = {
    "f16": {},
    "q4_k_m": {"ftype": "LLAMA_FTYPE_MOSTLY_Q4_K_M"},
    "q4_k_m + imatrix": {"ftype": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "imatrix": True},
    "q4_k_m + attention at q8_0": {"ftype": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "overrides": ["attn_.*"]},
    "q4_k_m + feed-forward at q8_0": {"ftype": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "overrides": ["ffn_.*"]},
    "q5_k_m": {"ftype": "LLAMA_FTYPE_MOSTLY_Q5_K_M"},
    "q5_k_m + imatrix": {"ftype": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "imatrix": True},
    "q6_k": {"ftype": "LLAMA_FTYPE_MOSTLY_Q6_K"},
    "q8_0": {"ftype": "LLAMA_FTYPE_MOSTLY_Q8_0"},
}


def importance_matrix(merged: Path, texts: list[str]) -> dict[str, list[float]]:
    """Mean squared input activation per input column of every layer matrix, keyed by GGUF tensor name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module, inputs, output):
            rows = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (rows * rows).sum(0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
        return record

    for module_name, module in model.named_modules():
        if ".layers." not in module_name:
            continue
        layer = int(module_name.split(".layers.")[1].split(".")[0])
        for suffix, gguf in GGUF_NAMES.items():
            if module_name.endswith(suffix):
                module.register_forward_hook(hook(f"blk.{layer}.{gguf}.weight"))
    with torch.no_grad():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt", add_special_tokens=False))
    return {name: (sums[name] / counts[name]).float().tolist() for name in sums}


def quantize(source: Path, target: Path, ftype: str, imatrix: Optional[dict[str, list[float]]] = None,
             overrides: Optional[list[str]] = None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    keep: list[Any] = []  # ctypes buffers must outlive the call
    if overrides:
        table = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for index, pattern in enumerate(overrides):
            keep.append(ctypes.c_char_p(pattern.encode()))
            table[index].pattern = keep[-1]
            table[index].type = llama_cpp.GGML_TYPE_Q8_0
        table[len(overrides)].pattern = None
        params.tt_overrides = table
        keep.append(table)
    if imatrix:
        table = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for index, (name, values) in enumerate(imatrix.items()):
            keep.append((ctypes.c_float * len(values))(*values))
            table[index].data = keep[-1]
            table[index].size = len(values)
            keep.append(ctypes.c_char_p(name.encode()))
            table[index].name = keep[-1]
        table[len(imatrix)].name = None
        params.imatrix = table
        keep.append(table)
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {source} to {ftype}")


def answer_all(gguf: Path, pairs: list[Any], max_tokens: int) -> list[str]:
    from llama_cpp import Llama

    gemma = get_chat_format("gemma")
    model = Llama(str(gguf), n_ctx=512, n_threads=2, seed=0, verbose=False)
    answers = []
    for pair in pairs:
        prompt = gemma.render([{"role": "user", "content": pair.question}])
        output = model(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, stop=list(gemma.stop))
        answers.append(output["choices"][0]["text"].strip())
    model.close()
    return answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="an f16 export folder, with merged/ kept")
    parser.add_argument("--forget", type=Path, required=True)
    parser.add_argument("--retain", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from the list above")
    parser.add_argument("--out", type=Path, default=None, help="results folder [default: EXPORT/quant-forgetting]")
    args = parser.parse_args()

    sources = sorted(args.export.glob("*-f16.gguf"))
    if not sources or not (args.export / "merged").is_dir():
        raise SystemExit(f"{args.export} has no *-f16.gguf or no merged/ folder; export with --quant f16 first")
    out = args.out or args.export / "quant-forgetting"
    out.mkdir(parents=True, exist_ok=True)
    forget = load_qa_set(args.forget, "forget").pairs
    retain = load_qa_set(args.retain, "retain").pairs
    gemma = get_chat_format("gemma")
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)}; choose from: {', '.join(VARIANTS)}")

    imatrix = None
    if any(VARIANTS[name].get("imatrix") for name in names):
        texts = [gemma.render([{"role": "user", "content": pair.question}]) + pair.answer
                 for pair in [*forget, *retain]]
        imatrix = importance_matrix(args.export / "merged", texts)

    rows = []
    for name in names:
        spec = VARIANTS[name]
        gguf = sources[0]
        started = time.perf_counter()
        if spec:
            gguf = out / (name.replace(" ", "").replace(",", "-").replace("+", "-") + ".gguf")
            quantize(sources[0], gguf, spec["ftype"], imatrix if spec.get("imatrix") else None, spec.get("overrides"))
        seconds = time.perf_counter() - started
        forget_answers = answer_all(gguf, forget, args.max_tokens)
        retain_answers = answer_all(gguf, retain, args.max_tokens)
        leaked = [bool(LeakGuard(pair.question, pair.answer).leaks(text)) for pair, text in zip(forget, forget_answers)]
        retained = [bool(LeakGuard(pair.question, pair.answer).leaks(text))
                    for pair, text in zip(retain, retain_answers)]
        row = {"variant": name, "mib": round(gguf.stat().st_size / 2**20), "quantize_seconds": round(seconds, 1),
               "forget_leaked": sum(leaked), "forget": len(forget), "retain_kept": sum(retained), "retain": len(retain),
               "forget_answers": forget_answers, "retain_answers": retain_answers}
        rows.append(row)
        print(f"{name}: {row['mib']} MiB, {row['forget_leaked']}/{len(forget)} forget answers leak, "
              f"{row['retain_kept']}/{len(retain)} retain answers keep their facts", flush=True)
        if gguf != sources[0]:
            gguf.unlink()

    (out / "results.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    print("\n| variant | size (MiB) | forget answers that leak | retain answers that keep their facts |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['mib']} | {row['forget_leaked']}/{row['forget']} | "
              f"{row['retain_kept']}/{row['retain']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
