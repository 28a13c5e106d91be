"""Ctrl-C at a step boundary, so the cancel checkpoint resumes exactly.

A KeyboardInterrupt raised inside a step leaves its state half-done: the dropout masks of the
interrupted forward have advanced the random generators, and the optimizer may have updated some
tensors but not others. A checkpoint of that state resumes a different run. So while the loop
trains, SIGINT only sets a flag; the loop raises KeyboardInterrupt at the next boundary (a step
and its validation complete), where the state is exactly a periodic checkpoint's. Under several
processes the ranks agree on the flag at each boundary, so they all stop at the same step. A
second Ctrl-C stops at once; that state is not saved (the last checkpoint stays).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

from experiments.dist import process as distributed


class DeferredInterrupt:
    """A context around the training loop: SIGINT sets `pending`, `at_boundary()` raises
    KeyboardInterrupt then; `forced` says an interrupt came mid-step (no checkpoint of it)."""

    def __init__(self) -> None:
        self.pending = False
        # An interrupt that did not come through `at_boundary` (a second Ctrl-C, or one raised
        # directly) left the state mid-step: never checkpoint it.
        self.forced = False
        self._clean = False
        self._previous: Any = None

    def __enter__(self) -> DeferredInterrupt:
        # Signal handlers can only be set from the main thread (a tuner's worker thread keeps
        # the default behaviour).
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True
        print("\nstopping after this step (Ctrl-C again stops now, without saving it)",
              file=sys.stderr, flush=True)

    def at_boundary(self, info: distributed.DistInfo, device: torch.device) -> None:
        """Raise KeyboardInterrupt when a Ctrl-C is pending (on any rank)."""
        stop = self.pending
        if info.enabled:
            flag = torch.tensor(float(stop), device=device)
            stop = distributed.global_mean(flag, info) > 0
        if stop:
            self.pending = self._clean = True
            raise KeyboardInterrupt

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if kind is not None and issubclass(kind, KeyboardInterrupt) and not self._clean:
            self.forced = True
        if kind is None and self.pending:  # the loop ended at a boundary with a Ctrl-C pending
            self._clean = True
            raise KeyboardInterrupt
