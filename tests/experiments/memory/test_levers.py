"""The memory levers through the harness: each run's measured state equals its lever's formula
(4-bit base, 8-bit AdamW), and the lever's own category moves as the formula says."""

from __future__ import annotations

from typing import Any

import pytest

from experiments.harness.config import resolve

BASE = ["model=tiny-bert", "train_size=64", "eval_size=16", "max_steps=2", "batch_size=16",
        "precision=fp32", "wandb=disabled", "progress=false"]
RUNS = {
    "lora": ["method=lora"],
    "lora-nf4": ["method=lora", "lora.quantize=nf4"],
    "lora-fp4": ["method=lora", "lora.quantize=fp4", "lora.double_quant=false"],
    "lora-8bit": ["method=lora", "optimizer_impl=adamw8bit"],
    "full": ["method=full"],
    "full-8bit": ["method=full", "optimizer_impl=adamw8bit"],
    "lora-ckpt": ["method=lora", "activation_checkpointing=true"],
}


@pytest.fixture(scope="module")
def levers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each lever's record memory section, two steps of tiny-bert."""
    from experiments.train import run

    runs_dir = tmp_path_factory.mktemp("runs")
    return {k: run(resolve([*BASE, *extra, f"runs_dir={runs_dir}"]))["memory"]
            for k, extra in RUNS.items()}


@pytest.mark.parametrize("key", list(RUNS))
def test_measured_state_is_the_formula(levers: dict[str, dict[str, Any]], key: str) -> None:
    """Measured / formula = 1 up to AdamW's 0-dim step counters (4 bytes a tensor)."""
    mem = levers[key]
    assert mem["state_vs_predicted"] == pytest.approx(1.0, abs=2e-3)
    assert mem["ledger_vs_predicted"] == pytest.approx(1.0, abs=2e-3)


def test_4bit_base_shows_codes_and_constants_apart(levers: dict[str, dict[str, Any]]) -> None:
    """nf4: the 4-bit codes are half a byte per quantised element, the constants beside them,
    and the fp32 parameters shrink by exactly 4 bytes per quantised element."""
    plain, q = levers["lora"], levers["lora-nf4"]
    at, nq = q["measured_at_state_peak"], q["quantized_params"]
    assert q["predicted_formula"] == "4N+0.5Nq+C+16M"
    assert at["weights_4bit"] == nq // 2 and at["quant_constants"] > 0
    assert plain["measured_at_state_peak"]["parameters"] - at["parameters"] == 4 * nq
    assert "weights_4bit" not in plain["measured_at_state_peak"]
    # without double quantisation the scales are fp32: 4 bytes per 64 elements
    fp4 = levers["lora-fp4"]
    assert fp4["measured_at_state_peak"]["quant_constants"] > nq * 4 // 64
    assert fp4["quant_constants_bytes"] == fp4["measured_at_state_peak"]["quant_constants"]


def test_8bit_adam_state_is_about_2_bytes_per_parameter(levers: dict[str, dict[str, Any]]) -> None:
    """Full fine-tuning: 4N+4N+2N; the state falls from 8 bytes per parameter to 2 in the big
    tensors (tiny-bert's small matrices keep fp32 moments: counted in the formula)."""
    full, eight = levers["full"], levers["full-8bit"]
    assert eight["predicted_formula"] == "4N+4N+2N8+8Ns"
    assert full["optimizer_bytes"] == 8 * full["N"]
    assert eight["optimizer_bytes"] < 0.6 * full["optimizer_bytes"]
    assert eight["grads_bytes"] == full["grads_bytes"]


def test_checkpointing_lowers_the_activations_only(levers: dict[str, dict[str, Any]]) -> None:
    """Activation checkpointing: the activations held for backward fall, the state stays."""
    plain, ckpt = levers["lora"], levers["lora-ckpt"]
    assert ckpt["activations_peak_bytes"] < 0.5 * plain["activations_peak_bytes"]
    assert ckpt["predicted_bytes"] == plain["predicted_bytes"]
    assert ckpt["measured_state_peak_bytes"] == plain["measured_state_peak_bytes"]
