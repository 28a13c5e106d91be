"""BENCHMARKS.md rendering details that the CPU smoke run does not reach (the CUDA columns)."""

from __future__ import annotations

from bench.report import _methods, _ratio


def test_cuda_table_has_mfu_and_device_peak() -> None:
    row = {"label": "full", "precision": "bf16-mixed", "params_trainable": 10,
           "step": {"median_ms": 2.0, "p25_ms": 1.5, "p75_ms": 2.5}, "step_vs_full": 1.0,
           "ledger_bytes": 160, "ledger_vs_full": 1.0, "activations_peak_bytes": 64,
           "tokens_per_s": 1000.0, "flops_per_step": 2e9, "flops_per_s": 1e12,
           "flops_6nt": 2e9, "mfu": 0.1234, "device_peak_bytes": 4096, "info": {},
           "examples_per_step": 4}
    lines = _methods({"rows": [row], "baseline": "full", "rounds": 3}, cuda=True)
    header = next(line for line in lines if line.startswith("| method"))
    assert header.endswith("| MFU | device peak |")
    assert "| 12.3% | 4.0 KiB |" in next(line for line in lines if line.startswith("| full"))
    assert any("MFU" in line and "dense bf16 peak" in line for line in lines)
    cpu = _methods({"rows": [{**row, "mfu": None}], "baseline": "full", "rounds": 3}, cuda=False)
    assert "MFU" not in "\n".join(cpu)


def test_small_ratios_keep_two_significant_digits() -> None:
    assert [_ratio(v) for v in (1.0, 0.25, 0.00095, 0.0)] == ["1.00", "0.25", "0.00095", "0.00"]
