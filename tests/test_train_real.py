"""A few training steps on the real embedded Gemma 3 270M (slow; marked real_model)."""

from __future__ import annotations

import json
import math

import pytest

from relearn_local.train.stage import run_train

from train_support import read_metrics, standard_inputs, train_config


@pytest.mark.real_model
def test_real_gemma_trains_a_few_steps(real_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, augmented, retain = standard_inputs(tmp_path, forget_count=2, retain_count=4)
    out = tmp_path / "real"
    config = train_config("gemma3-270m", out, augmented, retain, max_steps=2, batch_size=2, max_length=256,
                          lora_rank=32, lora_alpha=32, learning_rate=1e-4)
    result = run_train(config)
    assert result.plan.model_class == "Gemma3ForCausalLM"
    assert result.plan.trainable_parameters == 7_593_984
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    for row in rows:
        assert math.isfinite(row["loss"])
        assert 0 < row["forget_ce"] < 20
    recorded = json.loads((out / "adapter" / "relearn_base.json").read_text())
    assert recorded["base"] == "gemma3-270m"
    assert recorded["hf_path"] == str(real_base.hf_path)
    base = AutoModelForCausalLM.from_pretrained(recorded["hf_path"])
    PeftModel.from_pretrained(base, str(out / "adapter"))
