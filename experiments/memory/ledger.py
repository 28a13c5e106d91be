"""Memory measurement: one training step measured by category, the lecture's prediction (16N,
12N, 16N/G, 4N+16M) to hold it against, and a ledger that restates the prediction as a check.

N in the record is every parameter counted once (`param_split(model)["total"]`), M the
trainable ones. In 4N+16M the lecture's N is the frozen base (it counts the weights as N+M
floats), so that formula is evaluated with N - M; `formula_N` records the N a formula used.

The measurement (`experiments.memory.memtrack`): every live tensor storage over one whole step, by
category; `measured_state_peak_bytes` (weights + gradients + optimizer state + the optimizer's
temporaries at their peak) is what the formulas predict, so `state_vs_predicted` is the
headline. The ledger adds up parameter, gradient and optimizer-state bytes after the first step:
it multiplies the same counts by the same bytes as the formula, so `ledger_vs_predicted` agrees
by construction and is kept only as a cross-check of the state layout.

Measuring touches one step only, so the hot path stays untouched: `FirstStepProbe` reads the
gradients just before the first `optimizer.step()` and the optimizer state just after it
(optimizer step hooks); given the steps left, it also measures one whole step (`probe.step`,
see `memtrack.StepMeter`). `probe.activations(batch)` is the older saved-tensor peak of the
first forward+backward alone (bench uses it). `memory_record` merges these with `DevicePeak`
(process-level: CUDA's allocator maximum, or the CPU resident set's growth, approximate) into
the record's `memory` section.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import psutil
import torch

from experiments.contract import record as R

# Bytes per trainable parameter with Adam: weights + gradient + momentum + second moment.
BYTES_PER_TRAINABLE = {"fp32": 4 + 4 + 4 + 4, "bf16-mixed": 4 + 4 + 4 + 4,
                       "mixed-12n": 4 + 2 + 2 + 4}
BYTES_PER_FROZEN = 4  # fp32 weights only

LEDGER_METHOD = ("cross-check, agrees with the formula by construction: sum of the live "
                 "tensors' storages, each storage counted once; weights = parameters (buffers "
                 "excluded, reported as buffers_bytes); grads read before the first "
                 "optimizer.step(); optimizer = its per-parameter state after it (0-dim step "
                 "counters reported apart as optimizer_scalar_bytes)")
ACTIVATIONS_METHOD = ("exact, device-independent: peak bytes of the tensors autograd saved for "
                      "backward during the first training step (saved_tensors_hooks; each storage "
                      "counted once; parameter and buffer storages excluded)")


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    """What identifies a tensor's memory: its device and storage address."""
    try:
        return (t.device.type, t.device.index, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # no plain storage (e.g. tensor subclasses)
        return ("id", id(t))


def _storage_nbytes(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return int(t.numel() * t.element_size())


def unique_bytes(tensors: Iterable[torch.Tensor]) -> tuple[int, dict[str, int]]:
    """Total bytes of the tensors' storages, each counted once, and the split by dtype."""
    seen: set[tuple[Any, ...]] = set()
    total, by_dtype = 0, {}
    for t in tensors:
        # A sharded (FSDP) tensor counts this rank's local shard: its storage, padding included.
        t = t.to_local() if hasattr(t, "to_local") else t
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        n = _storage_nbytes(t)
        total += n
        name = str(t.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + n
    return total, by_dtype


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor],
                                                                      list[torch.Tensor]]:
    """(per-parameter state tensors, 0-dim scalar tensors such as AdamW's step counters)."""
    per_param, scalars = [], []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                (scalars if value.ndim == 0 else per_param).append(value)
    return per_param, scalars


class _Packed:
    """A saved tensor held for autograd; tells the tracker when autograd lets go of it."""

    __slots__ = ("tensor", "_release")

    def __init__(self, tensor: torch.Tensor, release: Any) -> None:
        self.tensor = tensor
        self._release = release

    def __del__(self) -> None:
        self._release()


class SavedTensorPeak:
    """Peak bytes of the tensors autograd saves for backward inside this context.

    Each storage counts once while any saved tensor still refers to it; it stops counting when
    autograd releases its last saved reference (after the node's backward, or when the graph is
    freed). Storages of `exclude` (parameters and buffers: model state, not activations) are
    never counted. Saving through the hooks returns the very same tensor, so the loss and
    gradients are unchanged.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._exclude = {_storage_key(t) for t in exclude}
        self._live: dict[tuple[Any, ...], list[int]] = {}  # key -> [references, bytes]
        self.current = 0
        self.peak = 0
        self.saved = 0  # how many tensors were saved (counting repeats)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> Any:
        key = _storage_key(t)
        base = t._base if t._base is not None else t
        # FSDP's all-gathered parameters are new Parameters each step: still model state.
        if key in self._exclude or isinstance(base, torch.nn.Parameter):
            return t
        self.saved += 1
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [0, _storage_nbytes(t)]
            self.current += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        return _Packed(t, lambda: self._release(key))

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Packed) else packed

    def _release(self, key: tuple[Any, ...]) -> None:
        entry = self._live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._live[key]

    def __enter__(self) -> SavedTensorPeak:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def model_state(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Every parameter and buffer of the model."""
    yield from model.parameters()
    yield from model.buffers()


class FirstStepProbe:
    """Measures the ledger on the first training step, and one whole step if `steps_left` is set.

    Registers one-shot optimizer step hooks: the pre-hook reads weights and gradients (after
    backward and clipping), the post-hook reads the optimizer state its first step created.
    With `steps_left` (the steps this process will take) `step(batch)` measures one whole step
    (`memtrack.StepMeter`), which also gives the activations; `activations` is then a no-op.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 steps_left: int | None = None) -> None:
        from experiments.memory.memtrack import StepMeter

        self.model = model
        self.optimizer = optimizer
        self.ledger: dict[str, Any] = {}
        self.saved: SavedTensorPeak | None = None
        self.batch_info: dict[str, Any] = {}
        self.meter = StepMeter(model, optimizer, steps_left) if steps_left is not None else None
        # A hook may not remove itself (torch iterates the hook dict while calling it): the
        # post-hook removes the pre-hook, and `result()` the post-hook.
        self._pre = optimizer.register_step_pre_hook(self._before_step)
        self._post = optimizer.register_step_post_hook(self._after_step)

    def step(self, batch: dict[str, torch.Tensor]) -> Any:
        """A context for one whole step (forward to optimizer step): measuring one of them."""
        return self.meter.step(batch) if self.meter is not None else contextlib.nullcontext()

    def activations(self, batch: dict[str, torch.Tensor]) -> Any:
        """A context for a step's forward+backward: measuring the first time (the first step,
        or the first after a resume), a no-op after, and always when `step` measures."""
        # One set of saved-tensor hooks is active at a time; the step's tracker needs its own.
        if self.saved is not None or self.meter is not None:
            return contextlib.nullcontext()
        self.saved = SavedTensorPeak(exclude=model_state(self.model))
        self.batch_info = {k: list(v.shape) for k, v in batch.items()}
        return self.saved

    def _before_step(self, *_: Any) -> None:
        weights, weights_by_dtype = unique_bytes(self.model.parameters())
        grads, grads_by_dtype = unique_bytes(p.grad for p in self.model.parameters()
                                             if p.grad is not None)
        buffers, _ = unique_bytes(self.model.buffers())
        from methods.quantize import quantized_tensors

        constants = quantized_tensors(self.model)[1]
        if constants:  # a 4-bit base's scales and tables: weights, though not parameters
            self.ledger[R.QUANT_CONSTANTS_BYTES] = unique_bytes(constants)[0]
        self.ledger.update({R.WEIGHTS_BYTES: weights, R.WEIGHTS_BY_DTYPE: weights_by_dtype,
                            R.GRADS_BYTES: grads, R.GRADS_BY_DTYPE: grads_by_dtype,
                            R.BUFFERS_BYTES: buffers})

    def _after_step(self, *_: Any) -> None:
        if R.OPTIMIZER_BYTES in self.ledger:
            return
        self._pre.remove()
        per_param, scalars = optimizer_state_tensors(self.optimizer)
        opt, opt_by_dtype = unique_bytes(per_param)
        self.ledger.update({R.OPTIMIZER_BYTES: opt, R.OPTIMIZER_BY_DTYPE: opt_by_dtype,
                            R.OPTIMIZER_SCALAR_BYTES: unique_bytes(scalars)[0]})

    def result(self) -> dict[str, Any]:
        """The ledger (empty keys if the first step never completed) and the activation peak."""
        self._pre.remove()
        self._post.remove()
        out: dict[str, Any] = dict(self.ledger)
        if R.GRADS_BYTES in out and R.OPTIMIZER_BYTES in out:
            out[R.TRAINABLE_STATE_BYTES] = out[R.GRADS_BYTES] + out[R.OPTIMIZER_BYTES]
            out[R.LEDGER_BYTES] = (out[R.WEIGHTS_BYTES] + out[R.TRAINABLE_STATE_BYTES]
                                   + out.get(R.QUANT_CONSTANTS_BYTES, 0))
        out["buffers_excluded"] = True
        out[R.LEDGER_METHOD] = LEDGER_METHOD
        if self.meter is not None and self.meter.result:
            out.update(measured_activations(self.meter.result))
        elif self.saved is not None:
            out[R.ACTIVATIONS_PEAK_BYTES] = int(self.saved.peak)
            out["activations_saved_tensors"] = self.saved.saved
            out["activations_batch"] = self.batch_info
            out["activations_scope"] = activations_scope(self.batch_info)
            out[R.ACTIVATIONS_METHOD] = ACTIVATIONS_METHOD
        return out

    def measured(self) -> dict[str, Any]:
        """The measured step's figures (empty if it never ran)."""
        return dict(self.meter.result) if self.meter is not None else {}


def measured_activations(measured: dict[str, Any]) -> dict[str, Any]:
    """The activation keys from a measured step: saved tensors apart from autocast's weight
    copies (`weight_casts_bytes`), each its own maximum over the step."""
    from experiments.memory import memtrack

    biggest = measured[R.MEASURED_MAX]
    # The batch's shapes by input (older records kept them under measured_batch).
    batch = measured.get(R.MEASURED_BATCH_SHAPES, measured.get(R.MEASURED_BATCH, {}))
    return {R.ACTIVATIONS_PEAK_BYTES: biggest[memtrack.ACTIVATIONS],
            R.WEIGHT_CASTS_BYTES: biggest[memtrack.WEIGHT_CASTS],
            "activations_batch": batch, "activations_scope": activations_scope(batch),
            R.ACTIVATIONS_METHOD: ("measured: the largest live bytes, over one whole step, of "
                                   "storages autograd saved for backward (saved_tensors_hooks), "
                                   "parameters, buffers, inputs and autocast's copies of the "
                                   "weights (weight_casts_bytes) excluded")}


def activations_scope(batch_shapes: dict[str, list[int]]) -> str:
    """What the activation peak covers, read from the measured batch's inputs."""
    if R.BATCH_FEATURES in batch_shapes and R.BATCH_TOKENS not in batch_shapes:
        return ("cached features: the classifier head's forward+backward alone; the frozen "
                "backbone ran once before training (no saved tensors) and is not counted")
    return "the whole model's forward+backward on one training batch"


def predict(n_total: int, n_trainable: int, precision: str,
            shards: int = 1) -> tuple[int, str, int]:
    """(bytes, formula, the formula's N) of the lecture's Adam budget, activations aside.

    With every parameter trainable: 16N (fp32 or autocast) or 12N (mixed-12n), over G when
    weights, gradients and state are sharded over G devices (ZeRO-3/FSDP). Otherwise the
    lecture's 4N+16M (4N+12M for mixed-12n), whose N is the frozen base model and M the trained
    parameters (it counts the weights as N+M floats): with `n_total` counting every parameter
    once, the formula's N is n_total - n_trainable.
    """
    per = BYTES_PER_TRAINABLE[precision]
    if n_trainable == n_total:
        formula, n = f"{per}N", n_total
        total = per * n
    else:
        formula, n = f"{BYTES_PER_FROZEN}N+{per}M", n_total - n_trainable
        total = BYTES_PER_FROZEN * n + per * n_trainable
    if shards > 1:
        formula = f"{formula}/G" if n_trainable == n_total else f"({formula})/G"
        total //= shards
    return total, formula, n


def formula_detail(formula: str, precision: str) -> str:
    """One sentence on what a `predict` formula counts."""
    per = "4+2+2+4 (bf16 grads and momentum)" if precision == "mixed-12n" else "4+4+4+4"
    if formula.startswith(("16N", "12N")):
        text = (f"every parameter trains: fp32 weight + grad + momentum + 2nd moment = {per} "
                "bytes each")
    else:
        text = (f"N = frozen parameters (all - M; the lecture's base model, whose weights it "
                f"counts as N+M floats) at 4 bytes, M = trainable at {per} bytes")
    if formula.endswith("/G"):
        text += "; sharded over G devices (ZeRO-3/FSDP)"
    return text + "; activations and buffers excluded"


def memory_record(peak: DevicePeak, probe: FirstStepProbe, params: dict[str, int],
                  precision: str, shards: int = 1) -> dict[str, Any]:
    """The record's `memory` section: the measured step against the prediction, the ledger
    (a cross-check), activations and the process-level figure."""
    from experiments.harness.optim import optimizer_impl

    out = peak.result(probe.meter.cuda_before if probe.meter is not None else (0, 0))
    out.update(probe.result())
    n, m = params["total"], params["trainable"]
    predicted, formula, formula_n = predict(n, m, precision, shards)
    detail = formula_detail(formula, precision)
    if shards == 1:  # a 4-bit base or 8-bit AdamW: their formula (experiments.memory.levers)
        from experiments.memory import levers

        lever = levers.predict(probe.model, probe.optimizer, n, m, precision)
        predicted, formula, formula_n, detail = lever or (predicted, formula, formula_n, detail)
        out.update(levers.lever_info(probe.model))
    out.update({"N": n, "M": m, "precision": precision, "shards": shards,
                R.PREDICTED_BYTES: predicted, R.PREDICTED_FORMULA: formula,
                "formula_N": formula_n, "predicted_detail": detail,
                R.OPTIMIZER_IMPL: optimizer_impl(probe.optimizer)})
    measured = probe.measured()
    if measured:
        out.update(measured)
        out[R.STATE_VS_PREDICTED] = measured[R.MEASURED_STATE_PEAK_BYTES] / predicted
    if R.LEDGER_BYTES in out:
        out[R.LEDGER_VS_PREDICTED] = out[R.LEDGER_BYTES] / predicted
    return out


SUMMARY_KEYS = (R.MEASURED_PEAK_BYTES, R.MEASURED_STATE_PEAK_BYTES, R.STATE_VS_PREDICTED,
                R.PREDICTED_BYTES, R.ACTIVATIONS_PEAK_BYTES, R.WEIGHT_CASTS_BYTES,
                R.WEIGHTS_BYTES, R.GRADS_BYTES, R.OPTIMIZER_BYTES, R.LEDGER_VS_PREDICTED,
                R.CUDA_MAX_ALLOCATED_BYTES, R.RSS_GROWTH_BYTES)


def memory_summary(memory: dict[str, Any]) -> dict[str, Any]:
    """The W&B summary entries `memory/<key>` of a record's memory section."""
    return {f"memory/{k}": memory[k] for k in SUMMARY_KEYS if k in memory}


class DevicePeak:
    """Process-level memory over a block: CUDA's max allocated, or the RSS growth on CPU.

    On CPU there is no allocator counter, so a thread samples the process's resident set every
    `interval` seconds; its growth over the baseline taken at entry is approximate (it misses
    spikes shorter than the interval and includes memory the allocator freed but kept, while
    the weights loaded before the baseline are not in it): `rss_growth_bytes`, never called a
    peak. The step's measured peak (`measured_peak_bytes`) is the figure to compare.
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

    def result(self, before: tuple[int, int] = (0, 0)) -> dict[str, Any]:
        """The process-level figure and how it was taken. `before`: CUDA (max allocated, max
        reserved) read just before someone reset the peak statistics inside the block."""
        if self.device.type == "cuda":
            allocated = max(int(torch.cuda.max_memory_allocated(self.device)), before[0])
            reserved = max(int(torch.cuda.max_memory_reserved(self.device)), before[1])
            return {R.CUDA_RUN_MAX_ALLOCATED_BYTES: allocated,
                    R.CUDA_RUN_MAX_RESERVED_BYTES: reserved,
                    "cuda_baseline_bytes": int(self.baseline),
                    "cuda_run_method": "torch.cuda.max_memory_allocated over preparation, "
                                       "training and evaluation (every allocation on the device)"}
        return {R.RSS_GROWTH_BYTES: int(self.peak - self.baseline),
                "rss_baseline_bytes": int(self.baseline),
                R.RSS_METHOD: f"approximate, not a peak of tensor memory: the CPU resident set's "
                              f"largest growth over its size before preparation, sampled every "
                              f"{self.interval * 1000:.0f} ms (misses short spikes, includes "
                              f"memory the allocator keeps, excludes the weights loaded before)"}


# Each rank's own share under several processes (FSDP shards weights, gradients and state).
PER_RANK_KEYS = (R.WEIGHTS_BYTES, R.GRADS_BYTES, R.OPTIMIZER_BYTES, R.LEDGER_BYTES,
                 R.ACTIVATIONS_PEAK_BYTES, R.MEASURED_PEAK_BYTES, R.MEASURED_STATE_PEAK_BYTES)


def per_rank(memory: dict[str, Any], info: Any) -> dict[str, Any]:
    """Adds `per_rank`: each rank's own memory figures (its local shards) to rank 0's section."""
    if info.enabled:
        from experiments.dist.process import gather_objects

        mine = {"rank": info.rank, **{k: memory.get(k) for k in PER_RANK_KEYS}}
        memory[R.PER_RANK] = gather_objects(mine, info)
    return memory
