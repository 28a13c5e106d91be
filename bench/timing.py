"""Timing: synchronised wall-clock of one call, interleaved rounds, medians and ratios."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer sees it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes, device work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, device: torch.device,
                desc: str = "", progress: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each function over `rounds` rounds, every function once per round.

    The order rotates by one each round, so every function takes every position equally often
    and slow drift of the machine (thermal, other load) hits all of them alike; per-round ratios
    then compare calls made seconds apart."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    for r in tqdm(range(rounds), desc=desc, disable=not progress, leave=False, file=sys.stderr):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(fns[name], device))
    return times


def stats(seconds: list[float]) -> dict[str, float]:
    """Median and quartiles in milliseconds, and how many samples."""
    q = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return {"median_ms": 1e3 * statistics.median(seconds), "p25_ms": 1e3 * q[0],
            "p75_ms": 1e3 * q[2], "n": len(seconds)}


def median_ratio(num: list[float], den: list[float]) -> float:
    """The median over rounds of num[i] / den[i] (the two timed in the same round)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))
