"""Interleaved timing, medians and ratios; where activations overtake the optimizer state."""

from __future__ import annotations

import pytest
import torch

from bench.scaling import crossing
from bench.timing import interleaved, median_ratio, stats


def test_interleaved_rotates_the_order_every_round() -> None:
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = interleaved(fns, 4, torch.device("cpu"), progress=False)
    assert {n: len(t) for n, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    rounds = ["".join(calls[i:i + 3]) for i in range(0, 12, 3)]
    assert rounds == ["abc", "bca", "cab", "abc"]


def test_stats_and_median_ratio() -> None:
    s = stats([0.001, 0.002, 0.003, 0.004, 0.100])
    assert s["median_ms"] == pytest.approx(3.0) and s["n"] == 5
    assert s["p25_ms"] <= s["median_ms"] <= s["p75_ms"]
    # Ratios are taken within a round: a slow round does not move them.
    assert median_ratio([1.0, 2.0, 10.0], [2.0, 4.0, 20.0]) == pytest.approx(0.5)


@pytest.mark.parametrize("points, seq, where", [
    ([(32, 10, 100), (64, 60, 100), (128, 140, 100)], 96.0, "between 64 and 128"),
    ([(32, 200, 100), (64, 400, 100)], None, "already at 32"),
    ([(32, 10, 100), (64, 20, 100)], None, "beyond 64"),
])
def test_crossing(points: list[tuple[int, int, int]], seq: float | None, where: str) -> None:
    out = crossing(points)
    assert out["seq"] == seq and out["where"].startswith(where)
