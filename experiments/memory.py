"""Memory measurement: the device's peak during training (CUDA allocator or CPU resident set)."""

from __future__ import annotations

import threading
from typing import Any

import psutil
import torch


class DevicePeak:
    """Peak memory over a block: CUDA max-allocated, or the sampled RSS growth on CPU.

    On CPU there is no allocator counter, so a thread samples the process's resident set every
    `interval` seconds; the peak growth over the baseline taken at entry is approximate (it
    misses spikes shorter than the interval and includes allocator caching).
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = psutil.Process()

    def __enter__(self) -> DevicePeak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = self.peak = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def result(self) -> dict[str, Any]:
        """peak_bytes (over the baseline on CPU; absolute on CUDA) and how it was measured."""
        if self.device.type == "cuda":
            return {"peak_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                    "reserved_peak_bytes": int(torch.cuda.max_memory_reserved(self.device)),
                    "baseline_bytes": int(self.baseline),
                    "peak_method": "torch.cuda.max_memory_allocated over training (exact)"}
        return {"peak_bytes": int(self.peak - self.baseline),
                "rss_peak_bytes": int(self.peak), "baseline_bytes": int(self.baseline),
                "peak_method": f"CPU resident-set growth over the baseline, sampled every "
                               f"{self.interval * 1000:.0f} ms (approximate)"}
