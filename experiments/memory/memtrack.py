"""One training step's memory, measured: every live tensor storage over the step, by category.

`StepTracker` watches one whole step (forward, backward, clipping, optimizer step) and files
every tensor storage it sees under one category: parameters, buffers, inputs, gradients,
optimizer state, activations (saved for backward), weight casts (autocast's low-precision copies
of the weights), the optimizer's temporaries and other temporaries. Replaying its allocation
and free events gives the step's peak of live bytes, each category at that moment and its own
maximum, and the peak of what the lecture's formulas count (weights, gradients, optimizer state
and the optimizer's temporaries), which lives together only around the optimizer step.

Why a TorchDispatchMode of our own rather than torch's tools (torch 2.13):
- `torch.distributed._tools.mem_tracker.MemTracker` attributes the same way (dispatch outputs,
  storages by weakref) but registers a hook on every parameter and raises on a frozen one
  ("cannot register a hook on a tensor that doesn't require gradient"): it cannot measure head,
  embedding, soft_prompt or LoRA, the methods this suite exists to compare.
- The profiler's categorised memory timeline (`torch.profiler._memory_profiler`) infers
  categories from the autograd graph: on a two-layer model with one frozen layer it filed the
  frozen weight under INPUT and showed no optimizer state at the peak.
Here a category comes from what a storage *is*, read off the objects that own it: the model's
parameters and buffers, `p.grad` before the optimizer steps, `optimizer.state` after, the
tensors autograd saves (`saved_tensors_hooks`), autocast's `_to_copy` of a parameter. A storage
that plays several roles over the step is filed under the first in `CATEGORIES` (an input that
is saved for backward stays an input), for the whole step. The weakref and storage helpers are
torch's own (`WeakIdKeyDictionary`, `is_traceable_wrapper_subclass`), as MemTracker's are.

What it counts: storages visible at the operator level, each once, at their full size (a view
counts its whole storage). Scratch memory a kernel allocates inside itself and frees before it
returns is not visible (on CUDA, `torch.cuda.max_memory_allocated` over the same step shows it),
nor are tensors alive before the step that the step never touches.
"""

from __future__ import annotations

import contextlib
import functools
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from experiments.contract import record as R

# The categories' names are the record's (`experiments.contract.record`, for readers without torch).
PARAMETERS = R.CAT_PARAMETERS
BUFFERS = R.CAT_BUFFERS
INPUTS = R.CAT_INPUTS
OPTIMIZER_STATE = R.CAT_OPTIMIZER_STATE
GRADIENTS = R.CAT_GRADIENTS
WEIGHT_CASTS = R.CAT_WEIGHT_CASTS
ACTIVATIONS = R.CAT_ACTIVATIONS
OPTIMIZER_TEMPORARIES = R.CAT_OPTIMIZER_TEMPORARIES
TEMPORARIES = R.CAT_TEMPORARIES
# A 4-bit base (methods.quantize): its codes are parameters, its constants plain tensors beside.
WEIGHTS_4BIT = R.CAT_WEIGHTS_4BIT
QUANT_CONSTANTS = R.CAT_QUANT_CONSTANTS
# Strongest first: a storage with several roles over the step is filed under the first.
CATEGORIES = (WEIGHTS_4BIT, QUANT_CONSTANTS, PARAMETERS, BUFFERS, INPUTS, OPTIMIZER_STATE,
              GRADIENTS, WEIGHT_CASTS, ACTIVATIONS, OPTIMIZER_TEMPORARIES, TEMPORARIES)
# What the lecture's formulas count: weights, gradients, optimizer state, and what the
# optimizer needs besides while it steps. Activations, weight casts, buffers and inputs aside.
STATE_CATEGORIES = (WEIGHTS_4BIT, QUANT_CONSTANTS, PARAMETERS, GRADIENTS, OPTIMIZER_STATE,
                    OPTIMIZER_TEMPORARIES)
_RANK = {c: i for i, c in enumerate(CATEGORIES)}
_TO_COPY = torch.ops.aten._to_copy.default

METHOD = ("exact for what it sees: live tensor storages during one training step (forward, "
          "backward, clipping, optimizer step), each storage once at its full size, tracked by "
          "a TorchDispatchMode (allocation = an operator's new output storage, free = the "
          "storage's weakref callback); categories from what owns a storage: model parameters "
          "and buffers, p.grad, optimizer.state, tensors saved for backward, autocast's copies "
          "of parameters; scratch memory inside one kernel is not seen")


def _is_dtensor_type(t: type) -> bool:
    """DTensor desugars into local tensor ops that come back through the mode (as MemTracker)."""
    return t.__name__ == "DTensor" and t.__module__.startswith("torch.distributed")


def _storages(t: torch.Tensor) -> list[torch.UntypedStorage]:
    """The storages behind a tensor (a wrapper subclass such as DTensor: its inner tensors).

    As torch.distributed._tools.common_utils.get_untyped_storages, whose package takes 2.5 s to
    import (it loads the FSDP memory tracker)."""
    if is_traceable_wrapper_subclass(t):
        attrs, _ = t.__tensor_flatten__()
        inner = (getattr(t, a) for a in attrs)
        return [st for i in inner if isinstance(i, torch.Tensor) for st in _storages(i)]
    try:
        return [t.untyped_storage()]
    except (RuntimeError, NotImplementedError):  # no plain storage (sparse, some subclasses)
        return []


class StepTracker(TorchDispatchMode):
    """Live tensor bytes by category over one step: enter before forward, exit after the update.

    `model` and `optimizer` say what is what; `inputs` are the batch tensors (tensors alive
    before the step that the step reads are filed as inputs in any case). The optimizer's step
    pre- and post-hooks mark its window (temporaries allocated inside are the optimizer's), the
    gradients it reads and the state it leaves. Nothing here holds a tensor: storages are known
    by weakref, so measuring does not change what is live.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 inputs: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self._inputs = [t for t in inputs if isinstance(t, torch.Tensor)]
        self._sid: WeakIdKeyDictionary = WeakIdKeyDictionary()  # storage -> id
        self._refs: dict[int, weakref.ref] = {}
        self._size: dict[int, int] = {}
        self._rank: dict[int, int] = {}
        self._what: dict[int, str] = {}  # how each new storage came about (for the report)
        self._initial: dict[int, int] = {}  # storages alive before the step: id -> bytes
        self._events: list[tuple[int, int]] = []  # (id, change in bytes), in time order
        self._in_update = False
        self._open = False
        self._hooks: list[Any] = []
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.seconds = 0.0

    # --- bookkeeping -----------------------------------------------------------------------

    def _track(self, st: torch.UntypedStorage, category: str, what: str = "",
               before: bool = False) -> None:
        """Note a storage in a role: new ones start counting now (`before`: from the start)."""
        sid = self._sid.get(st)
        if sid is None:
            sid = len(self._size)
            self._sid[st] = sid
            n = self._size[sid] = int(st.nbytes())
            self._rank[sid] = _RANK[category]
            self._refs[sid] = weakref.ref(st, functools.partial(self._freed, sid))
            if what:
                self._what[sid] = what
            if before:
                self._initial[sid] = n
            elif n:
                self._events.append((sid, n))
            return
        self._rank[sid] = min(self._rank[sid], _RANK[category])
        n = int(st.nbytes())
        if n != self._size[sid]:  # resized in place (resize_, out= ops)
            self._events.append((sid, n - self._size[sid]))
            self._size[sid] = n

    def _freed(self, sid: int, _ref: weakref.ref) -> None:
        if self._open and self._size[sid]:
            self._events.append((sid, -self._size[sid]))
        self._refs.pop(sid, None)

    def _mark(self, tensors: Iterable[torch.Tensor | None], category: str) -> None:
        """Give these tensors' storages a role (alive before the step if not seen yet)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                for st in _storages(t):
                    self._track(st, category, before=True)

    def _mark_grads(self) -> None:
        self._mark((p.grad for p in self.model.parameters()), GRADIENTS)

    def _mark_state(self) -> None:
        if self.optimizer is not None:
            self._mark((v for s in self.optimizer.state.values() for v in s.values()),
                       OPTIMIZER_STATE)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        """Saved for backward: an activation (returned as is, so autograd keeps what it kept)."""
        if self._open:
            self._mark([t], ACTIVATIONS)
        return t

    def _resized(self, st: torch.UntypedStorage, size: int) -> Any:
        out = self._resize(st, size)
        if self._open and st in self._sid:
            self._track(st, TEMPORARIES)  # keeps its category; notes the new size
        return out

    def _before_update(self, *_: Any) -> None:
        self._mark_grads()
        self._in_update = True

    def _after_update(self, *_: Any) -> None:
        self._in_update = False
        self._mark_state()

    # --- the mode --------------------------------------------------------------------------

    def __enter__(self) -> StepTracker:
        from methods.quantize import quantized_tensors

        codes, constants = quantized_tensors(self.model)
        self._mark(codes, WEIGHTS_4BIT)
        self._mark(constants, QUANT_CONSTANTS)
        self._mark(self.model.parameters(), PARAMETERS)
        self._mark(self.model.buffers(), BUFFERS)
        self._mark(self._inputs, INPUTS)
        self._inputs = []
        self._mark_grads()
        self._mark_state()
        if self.optimizer is not None:
            self._hooks = [self.optimizer.register_step_pre_hook(self._before_update),
                           self.optimizer.register_step_post_hook(self._after_update)]
        self._open = True
        self.seconds = time.perf_counter()
        self._saved.__enter__()
        # FSDP2 allocates and frees its all-gathered weights with UntypedStorage.resize_, which
        # no dispatch mode sees; MemTracker patches it for the same reason.
        self._resize = torch.UntypedStorage.resize_
        tracker = self

        def resize_(st: torch.UntypedStorage, size: int) -> Any:  # a function: binds `st`
            return tracker._resized(st, size)

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        torch.UntypedStorage.resize_ = self._resize  # type: ignore[method-assign]
        self._saved.__exit__(*exc)
        self._mark_grads()
        self._mark_state()
        self._open = False
        self.seconds = time.perf_counter() - self.seconds
        for hook in self._hooks:
            hook.remove()
        self._refs.clear()  # no callbacks after the step

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        if any(_is_dtensor_type(t) for t in types):
            return NotImplemented
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for t in inputs:  # alive before the step, read by it: inputs (unless known already)
            for st in _storages(t):
                if st not in self._sid:
                    self._track(st, INPUTS, before=True)
        category = OPTIMIZER_TEMPORARIES if self._in_update else TEMPORARIES
        if func is _TO_COPY and inputs and self._is_parameter(inputs[0]):
            category = WEIGHT_CASTS  # autocast's bf16 copy of an fp32 weight
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                for st in _storages(t):
                    if st not in self._sid:
                        self._track(st, category, _describe(func, t))
                    else:
                        self._track(st, category)
        return out

    def _is_parameter(self, t: torch.Tensor) -> bool:
        return any(self._rank.get(self._sid.get(st, -1)) == _RANK[PARAMETERS]
                   for st in _storages(t))

    # --- the result ------------------------------------------------------------------------

    def summary(self, top: int = 5) -> dict[str, Any]:
        """Peak of all live bytes and of the formulas' categories, with each category's bytes.

        `measured_peak_bytes` and `measured_at_peak` (each category at that moment),
        `measured_max` (each category's own maximum over the step), `measured_state_peak_bytes`
        and `measured_at_state_peak`, and the largest optimizer temporaries alive at the state
        peak (`optimizer_temporaries_at_state_peak`: how each was made, its bytes).
        """
        category = {sid: CATEGORIES[r] for sid, r in self._rank.items()}
        cur = dict.fromkeys(CATEGORIES, 0)
        for sid, n in self._initial.items():
            cur[category[sid]] += n
        biggest = dict(cur)
        total = peak = sum(cur.values())
        state = state_peak = sum(cur[c] for c in STATE_CATEGORIES)
        at_peak, at_state_peak, state_index = dict(cur), dict(cur), -1
        for i, (sid, delta) in enumerate(self._events):
            c = category[sid]
            cur[c] += delta
            total += delta
            if c in STATE_CATEGORIES:
                state += delta
            if delta > 0:
                biggest[c] = max(biggest[c], cur[c])
                if total > peak:
                    peak, at_peak = total, dict(cur)
                if state > state_peak:
                    state_peak, at_state_peak, state_index = state, dict(cur), i
        for c in (WEIGHTS_4BIT, QUANT_CONSTANTS):  # listed only for a model that has them
            if not biggest[c]:
                for counts in (at_peak, at_state_peak, biggest):
                    del counts[c]
        return {R.MEASURED_PEAK_BYTES: peak, R.MEASURED_AT_PEAK: at_peak,
                R.MEASURED_MAX: biggest, R.MEASURED_STATE_PEAK_BYTES: state_peak,
                R.MEASURED_AT_STATE_PEAK: at_state_peak,
                R.OPTIMIZER_TEMPORARIES: self._live_at(state_index, OPTIMIZER_TEMPORARIES,
                                                       category, top)}

    def _live_at(self, index: int, wanted: str, category: dict[int, str],
                 top: int) -> list[dict[str, Any]]:
        """The largest storages of one category alive just after event `index`."""
        live = {sid: n for sid, n in self._initial.items() if category[sid] == wanted}
        for sid, delta in self._events[:index + 1]:
            if category[sid] == wanted:
                live[sid] = live.get(sid, 0) + delta
        biggest = sorted(((n, sid) for sid, n in live.items() if n > 0), reverse=True)[:top]
        return [{"bytes": n, "made_by": self._what.get(sid, "")} for n, sid in biggest]


class StepMeter:
    """The harness's measurement: `StepTracker` on one step of the run, chosen and timed.

    It measures the second step this process takes (the first if it takes only one): by then
    the optimizer state exists before the step begins, as on every later step, so the step's
    peak is the run's steady state. (On the first step AdamW creates its state inside
    `optimizer.step()`, after the activations are gone.) On CUDA it also reads
    `torch.cuda.max_memory_allocated` over the same step; `cuda_before` keeps the maxima the
    reset cleared, so a whole-run figure can still include them.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 steps_left: int) -> None:
        self.model, self.optimizer = model, optimizer
        self.target = 2 if steps_left >= 2 else 1
        self.count = 0
        self.result: dict[str, Any] = {}
        self.cuda_before = (0, 0)  # (max allocated, max reserved) before the measured step

    def step(self, batch: dict[str, Any]) -> contextlib.AbstractContextManager:
        """A context for one whole step (forward to optimizer step): measuring the chosen one."""
        self.count += 1
        return self._measure(batch) if self.count == self.target else contextlib.nullcontext()

    @contextlib.contextmanager
    def _measure(self, batch: dict[str, Any]) -> Iterator[None]:
        device = next(iter(self.model.parameters())).device
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
            self.cuda_before = (torch.cuda.max_memory_allocated(device),
                                torch.cuda.max_memory_reserved(device))
            torch.cuda.reset_peak_memory_stats(device)
        tracker = StepTracker(self.model, self.optimizer, iter_batch(batch))
        t = time.perf_counter()
        with tracker:
            yield
        if cuda:
            torch.cuda.synchronize(device)
        out = tracker.summary()
        out.update({R.MEASURED_STEP: self.count,
                    R.MEASURED_STEP_S: round(time.perf_counter() - t, 4),
                    R.MEASURED_BATCH: {k: list(v.shape) for k, v in batch.items()
                                       if isinstance(v, torch.Tensor)},
                    R.MEASURED_METHOD: METHOD})
        if cuda:
            out[R.CUDA_MAX_ALLOCATED_BYTES] = int(torch.cuda.max_memory_allocated(device))
            out[R.CUDA_VS_MEASURED] = (out[R.CUDA_MAX_ALLOCATED_BYTES]
                                       / max(1, out[R.MEASURED_PEAK_BYTES]))
        self.result = out


def _describe(func: Any, t: torch.Tensor) -> str:
    """`aten.sqrt.default -> float32[384, 1536]`: the operator and the tensor it returned."""
    dtype = str(t.dtype).removeprefix("torch.")
    return f"{getattr(func, '__name__', func)} -> {dtype}{list(t.shape)}"


def iter_batch(batch: dict[str, Any]) -> Iterator[torch.Tensor]:
    """The tensors of a batch dict."""
    return (v for v in batch.values() if isinstance(v, torch.Tensor))
