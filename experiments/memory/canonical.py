"""The measured step on one canonical batch shape, so the memory axis compares methods.

A run's own steps differ in padded length with the seed (one seed's second batch is 32x22
tokens, another's 32x37), and a step's activations grow with it: measured on the run's own
step, one configuration's peak spread wider across seeds than most gaps between methods. Here
the measured step is an extra one, outside training, on a batch of a fixed shape: the rank's
batch rows x the training split's 95th-percentile token length (capped at max_length), built
from real training rows truncated or padded to it. Everything the extra step changes (the
trainable weights, the optimizer state, the random number generators) is put back afterwards,
so training runs exactly as it would without it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from experiments.contract import record as R
from experiments.memory.memtrack import StepMeter

PERCENTILE = 95
RULE = (f"one extra step outside training on the rank's batch rows x the training split's "
        f"{PERCENTILE}th-percentile token length (capped at max_length): real training rows "
        "truncated or padded to it (rows repeated if the batch is short); weights, optimizer "
        "state and random number generators restored after it; a batch of cached features "
        "(the head) keeps its rows and its feature width")


def canonical_length(lengths: Sequence[int], max_length: int,
                     percentile: float = PERCENTILE) -> int:
    """The training split's token length at `percentile`, at most max_length (0: no tokens)."""
    real = [n for n in lengths if n > 0]
    if not real:
        return 0
    length = math.ceil(float(np.percentile(real, percentile)))
    return max(1, min(length, max_length)) if max_length > 0 else max(1, length)


def _fit(t: torch.Tensor, rows: int, length: int | None, tokens: int | None) -> torch.Tensor:
    """t with `rows` rows (repeated cyclically) and, if it is per token, `length` tokens."""
    index = torch.arange(rows, device=t.device) % t.shape[0]
    t = t.index_select(0, index)
    if length is None or tokens is None or t.ndim < 2 or t.shape[1] != tokens:
        return t
    if length <= tokens:
        return t[:, :length].contiguous()
    pad = torch.zeros((rows, length - tokens, *t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)  # zeros: padding ids, masked out, token type 0


def canonical_batch(batch: dict[str, Any], rows: int, length: int) -> dict[str, Any]:
    """A batch of `rows` real rows, every per-token tensor cut or padded to `length` tokens.

    A batch without input_ids (the head's cached features) keeps its row width; `length` 0
    means the same."""
    ids = batch.get(R.BATCH_TOKENS)
    tokens = int(ids.shape[1]) if isinstance(ids, torch.Tensor) and ids.ndim == 2 else None
    target = length if tokens is not None and length > 0 else None
    return {k: _fit(v, rows, target, tokens) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def batch_shape(batch: dict[str, Any]) -> list[int]:
    """[rows, tokens] of a token batch; [rows, width] of a features batch."""
    main = batch.get(R.BATCH_TOKENS, batch.get(R.BATCH_FEATURES))
    if not isinstance(main, torch.Tensor):
        main = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return [int(d) for d in main.shape[:2]]


def _copy(value: Any) -> Any:
    """A CPU copy of a tensor (device memory stays as training has it), else the value."""
    return value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value


@contextlib.contextmanager
def preserved(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Put back, on exit, the trainable weights, the optimizer state and the RNG states.

    Restored in place (the same tensors, new values), so the optimizer keeps its references."""
    params = [p for p in model.parameters() if p.requires_grad]
    weights = [_copy(p) for p in params]
    state = {p: {k: _copy(v) for k, v in s.items()} for p, s in optimizer.state.items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params, weights, strict=True):
                p.copy_(saved)
                p.grad = None
            for p in [p for p in optimizer.state if p not in state]:
                del optimizer.state[p]
            for p, saved in state.items():
                live = optimizer.state[p]
                for k in [k for k in live if k not in saved]:
                    del live[k]
                for k, v in saved.items():
                    old = live.get(k)
                    if (isinstance(v, torch.Tensor) and isinstance(old, torch.Tensor)
                            and old.shape == v.shape and old.dtype == v.dtype):
                        old.copy_(v)
                    else:
                        live[k] = v.to(p.device) if isinstance(v, torch.Tensor) else v
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def measure(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any],
            step: Callable[[dict[str, Any]], None]) -> StepMeter:
    """One whole step (`step(batch)`: forward, backward, update) measured on `batch`, then
    undone; the meter holds the figures (`memtrack.StepMeter.result`)."""
    meter = StepMeter(model, optimizer, steps_left=1)
    with preserved(model, optimizer), meter.step(batch):
        step(batch)
    return meter
