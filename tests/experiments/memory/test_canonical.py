"""The measured step on one canonical batch shape: the same for every seed, and invisible to
training (the extra step is undone: weights, optimizer state and random numbers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.memory import canonical

BASE = ["method=lora", "model=tiny-bert", "train_size=64", "eval_size=16", "max_steps=3",
        "batch_size=16", "eval_every=0", "wandb=disabled", "progress=false"]


def _run(runs_dir: Path, *extra: str) -> dict[str, Any]:
    from experiments.harness.config import resolve
    from experiments.train import run

    return run(resolve([*BASE, f"runs_dir={runs_dir}", *extra]))


def test_canonical_length_is_the_95th_percentile_capped() -> None:
    lengths = list(range(1, 101))  # 95th percentile: 95.05 -> 96 tokens
    assert canonical.canonical_length(lengths, 128) == 96
    assert canonical.canonical_length(lengths, 64) == 64  # capped at max_length
    assert canonical.canonical_length([0, 0], 64) == 0  # cached features: no tokens


def test_canonical_batch_cuts_pads_and_fills_rows() -> None:
    batch = {"input_ids": torch.arange(12).reshape(3, 4), "attention_mask": torch.ones(3, 4),
             "labels": torch.tensor([0, 1, 0])}
    long = canonical.canonical_batch(batch, rows=5, length=6)
    assert canonical.batch_shape(long) == [5, 6]
    assert long["attention_mask"][:, 4:].sum() == 0 and long["labels"].tolist() == [0, 1, 0, 0, 1]
    assert long["input_ids"][3].tolist() == [0, 1, 2, 3, 0, 0]  # row 0 again, padded
    short = canonical.canonical_batch(batch, rows=2, length=3)
    assert short["input_ids"].tolist() == [[0, 1, 2], [4, 5, 6]]
    features = canonical.canonical_batch({"features": torch.ones(3, 8)}, rows=4, length=0)
    assert canonical.batch_shape(features) == [4, 8]


def test_the_extra_step_is_undone() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.state[model[2].weight].items()}
    batch = {"x": torch.randn(16, 4)}
    rng = torch.get_rng_state()  # the dropout inside the extra step draws from it

    def step(b: dict[str, torch.Tensor]) -> None:
        model(b["x"]).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    meter = canonical.measure(model, opt, batch, step)
    assert meter.result["measured_peak_bytes"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    live = opt.state[model[2].weight]
    assert all(torch.equal(state[k], live[k]) for k in state)
    assert torch.equal(torch.get_rng_state(), rng)


def test_two_seeds_measure_the_same_batch_and_peak(tmp_path: Path) -> None:
    """Acceptance: the same small LoRA config, two seeds: one measured_batch, peaks within 1%."""
    mems = [_run(tmp_path / f"s{seed}", f"seed={seed}")["memory"] for seed in (0, 1)]
    assert mems[0]["measured_batch"] == mems[1]["measured_batch"]
    rows, tokens = mems[0]["measured_batch"]
    assert rows == 16 and 0 < tokens <= 64
    peaks = [m["measured_peak_bytes"] for m in mems]
    assert abs(peaks[0] - peaks[1]) <= 0.01 * max(peaks), peaks


def test_training_is_the_same_with_or_without_the_measurement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured = _run(tmp_path / "a", "seed=3")
    from experiments.memory.memtrack import StepMeter

    skipped = []

    def no_extra_step(model: Any, opt: Any, batch: Any, step: Any) -> StepMeter:
        skipped.append(batch)  # the extra step is not taken: training alone
        return StepMeter(model, opt, steps_left=1)

    monkeypatch.setattr(canonical, "measure", no_extra_step)
    plain = _run(tmp_path / "b", "seed=3")
    assert len(skipped) == 1 and measured["memory"]["measured_peak_bytes"] > 0
    for key in ("metrics", "val_history"):
        assert measured[key] == plain[key], key
