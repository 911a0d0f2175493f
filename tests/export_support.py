"""Fixtures shared by the export tests: a tiny trained-looking adapter, the converter, and one tiny export.

The tiny export (f16 and q8_0 GGUFs of the 2-layer random Gemma 3 fixture)
is built once per session, because each run of llama.cpp's converter
starts a Python process that imports torch and transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORGET = REPO / "examples" / "forget.json"
# Standard deviation of the random LoRA B weights: large enough that the
# adapter changes the tiny model's logits well above the merge check's minimum.
LORA_B_SCALE = 0.5


def session_home(tmp_path_factory) -> Path:
    """The $RELEARN_HOME the autouse fixture gives ordinary tests, for session fixtures that run before it."""
    return tmp_path_factory.getbasetemp() / "relearn-home"


def make_adapter(base_dir: Path, out: Path, scale: float = LORA_B_SCALE, seed: int = 0,
                 target_modules=("q_proj", "v_proj", "o_proj", "up_proj"), record: dict | None = None) -> Path:
    """Save a rank-8 LoRA adapter for ``base_dir`` whose B weights are random (0 leaves the base unchanged)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(target_modules)))
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, scale) if scale else weight.zero_()
    peft_model.save_pretrained(str(out))
    base_record = record if record is not None else {"base": str(base_dir), "hf_path": str(base_dir),
                                                      "family": "gemma", "digest": None}
    (out / "relearn_base.json").write_text(json.dumps(base_record), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def converter(tmp_path_factory):
    """llama.cpp's converter from a local llama-cpp-python source archive; the tests skip without one."""
    from relearn_local.errors import ExportError
    from relearn_local.export.convert import locate_converter

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELEARN_HOME", str(session_home(tmp_path_factory)))
        try:
            return locate_converter(offline=True)
        except ExportError as exc:
            pytest.skip(f"no local llama.cpp converter: {exc}")


@pytest.fixture(scope="session")
def export_base_dir(tiny_model_dir) -> Path:
    """The tiny Gemma 3 base that export tests merge adapters into.

    llama.cpp scales Gemma 3 attention by 1/sqrt(head_dim) and ignores
    query_pre_attn_scalar; the shared fixture sets the two equal, so its GGUF
    computes the same function as the HF model.
    """
    config = json.loads((tiny_model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["query_pre_attn_scalar"] == config["head_dim"], "the tiny fixture must match llama.cpp's scaling"
    return tiny_model_dir


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, export_base_dir) -> Path:
    return make_adapter(export_base_dir, tmp_path_factory.mktemp("tiny-adapter"))


def export_tiny(tmp_path_factory, adapter: Path, quant: str, out: Path | None = None, **overrides):
    """Run a tiny export with $RELEARN_HOME set as for ordinary tests."""
    from relearn_local.config import build_config
    from relearn_local.export import ExportConfig, run_export

    out = out or tmp_path_factory.mktemp(f"tiny-export-{quant}") / "export"
    # Few, short parity answers: the random tiny model's logits are nearly
    # tied, so q8_0 rounding flips a token somewhere in longer answers.
    values = {"adapter": adapter, "out": out, "quant": quant, "forget": FORGET, "offline": True,
              "name": "relearned-tiny", "parity_questions": 3, "parity_tokens": 12, **overrides}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELEARN_HOME", str(session_home(tmp_path_factory)))
        return run_export(build_config(ExportConfig, overrides=values))


@pytest.fixture(scope="session")
def tiny_export_f16(tmp_path_factory, tiny_adapter, converter):
    return export_tiny(tmp_path_factory, tiny_adapter, "f16")


@pytest.fixture(scope="session")
def tiny_export_q8(tmp_path_factory, tiny_adapter, converter):
    return export_tiny(tmp_path_factory, tiny_adapter, "q8_0")


def cpu_count() -> int:
    return os.cpu_count() or 1
