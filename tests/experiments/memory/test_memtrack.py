"""The step tracker against hand counts: each category pinned on models whose tensors are known."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from experiments.harness.optim import CHUNK, Mixed12nAdamW, make_adamw, optimizer_impl
from experiments.memory import memtrack
from experiments.memory.ledger import SavedTensorPeak, model_state
from experiments.memory.memtrack import StepMeter, StepTracker

F32, BF16 = 4, 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Small models gain nothing from intra-op threads on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class MatRelu(torch.nn.Module):
    """relu(x @ w): its saved tensors are known (x for w's gradient, the relu output)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w)


class TwoLayer(torch.nn.Module):
    """relu(x @ w1) * scale @ w2, w1 frozen: the case the profiler's timeline misfiled."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(d_in, d_hidden), requires_grad=False)
        self.w2 = torch.nn.Parameter(torch.randn(d_hidden, d_out))
        self.register_buffer("scale", torch.full((d_hidden,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.relu(x @ self.w1) * self.scale) @ self.w2


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                steps: int = 2, autocast: bool = False) -> dict[str, Any]:
    """`steps` steps (forward, backward, clip, step, zero_grad), the last one measured."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    meter = StepMeter(model, optimizer, steps)
    for _ in range(steps):
        with meter.step({"x": x}):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(x).float().sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss
    return meter.result


# --- the peak of a step whose live tensors are counted by hand -----------------------------

def test_peak_equals_the_hand_count_of_a_known_step() -> None:
    """Forward holds w, x, x @ w and its relu (saved); backward holds w, x, the relu's gradient
    and w's gradient. The peak is the latter: w + x + grad of x @ w + grad of w (+ the 0-dim loss
    and its seed gradient)."""
    b, d_in, d_out = 64, 256, 1024
    model, x = MatRelu(d_in, d_out), torch.randn(b, d_in)
    tracker = StepTracker(model, None, [x])
    with tracker:
        model(x).sum().backward()
    got = tracker.summary()
    w, xb, h = d_in * d_out * F32, b * d_in * F32, b * d_out * F32
    hand = w + xb + h + w
    assert got["measured_peak_bytes"] == pytest.approx(hand, rel=0.01)
    assert got["measured_peak_bytes"] - hand == 2 * F32  # exactly: the loss and its seed
    at = got["measured_at_peak"]
    assert (at["parameters"], at["inputs"], at["gradients"]) == (w, xb, w)
    assert got["measured_max"]["activations"] == h  # the relu output, saved for backward
    assert got["measured_max"]["weight_casts"] == 0
    # Measuring leaves the arithmetic alone.
    twin = MatRelu(d_in, d_out)
    twin.load_state_dict(model.state_dict())
    twin(x).sum().backward()
    assert torch.equal(twin.w.grad, model.w.grad)


def test_every_category_on_a_frozen_layer_and_a_buffer() -> None:
    """w1 frozen (a parameter, never an input), only w2 trained: its gradient and AdamW state;
    the buffer apart; the hidden activation saved for w2's gradient."""
    b, d_in, d_hidden, d_out = 32, 128, 512, 64
    model, x = TwoLayer(d_in, d_hidden, d_out), torch.randn(b, d_in)
    optimizer = torch.optim.AdamW([model.w2], lr=1e-3, fused=True)
    got = train_steps(model, optimizer, x)
    w1, w2 = d_in * d_hidden * F32, d_hidden * d_out * F32
    step_counter = F32  # fused AdamW's 0-dim float32 step
    biggest = got["measured_max"]
    assert biggest["parameters"] == w1 + w2
    assert biggest["buffers"] == d_hidden * F32
    assert biggest["inputs"] == b * d_in * F32
    assert biggest["gradients"] == w2
    assert biggest["optimizer_state"] == 2 * w2 + step_counter
    assert biggest["activations"] == b * d_hidden * F32  # relu(x @ w1) * scale, saved by @ w2
    assert biggest["optimizer_temporaries"] == 0  # fused AdamW allocates nothing on CPU
    # The state peak comes at the optimizer step, with the gradient alive.
    state = got["measured_at_state_peak"]
    assert (state["parameters"], state["gradients"], state["optimizer_state"]) == (
        w1 + w2, w2, 2 * w2 + step_counter)
    assert got["measured_state_peak_bytes"] == w1 + w2 + w2 + 2 * w2 + step_counter
    assert got["measured_step"] == 2


# --- where the formulas fail: the optimizer's own temporaries ------------------------------

def one_large_linear(impl: str, steps: int = 2) -> tuple[dict[str, Any], int]:
    """A 1024x1024 Linear (no bias) trained by torch's AdamW of one implementation."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1024, 1024, bias=False)
    optimizer = make_adamw([{"params": list(model.parameters()), "weight_decay": 0.01}], 1e-3,
                           "fp32", impl)
    assert optimizer_impl(optimizer) == impl
    return train_steps(model, optimizer, torch.randn(8, 1024), steps), 1024 * 1024


def test_foreach_adamw_exceeds_16n_by_a_second_moment_sized_temporary() -> None:
    got, n = one_large_linear("foreach")
    assert got["measured_state_peak_bytes"] / (16 * n) > 1.05
    # The extra is torch._foreach_sqrt(exp_avg_sq): one fp32 tensor per parameter, as large.
    assert got["measured_at_state_peak"]["optimizer_temporaries"] == 4 * n
    made = got["optimizer_temporaries_at_state_peak"]
    assert made[0]["bytes"] == 4 * n and "_foreach_sqrt" in made[0]["made_by"]
    assert got["measured_state_peak_bytes"] == 20 * n + F32  # + the step counter


def test_fused_adamw_holds_16n_with_nothing_but_its_step_counter() -> None:
    """Hand count of what lives at the update: weight, gradient, exp_avg, exp_avg_sq (4N each)
    and the 0-dim float32 step; the fused kernel allocates no tensor of its own."""
    got, n = one_large_linear("fused")
    assert got["measured_max"]["optimizer_temporaries"] == 0
    assert got["optimizer_temporaries_at_state_peak"] == []
    assert got["measured_state_peak_bytes"] == 16 * n + F32
    # On the first step the state is created inside optimizer.step(): still state, not a
    # temporary, and the same peak.
    first, _ = one_large_linear("fused", steps=1)
    assert first["measured_max"]["optimizer_temporaries"] == 0
    assert first["measured_state_peak_bytes"] == 16 * n + F32


def test_loop_adamw_holds_two_temporaries_of_the_largest_parameter() -> None:
    got, n = one_large_linear("loop")
    # exp_avg_sq.sqrt() and its division by the bias correction: both alive for a moment.
    assert got["measured_at_state_peak"]["optimizer_temporaries"] == 2 * 4 * n


def test_mixed_12n_temporaries_stay_within_one_chunk() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(1024, 1024, bias=False)
    chunk = 2**16
    optimizer = Mixed12nAdamW(model.parameters(), lr=1e-3, chunk=chunk)
    got = train_steps(model, optimizer, torch.randn(8, 1024), autocast=True)
    n = 1024 * 1024
    temporaries = got["measured_at_state_peak"]["optimizer_temporaries"]
    assert 0 < temporaries <= 3 * F32 * chunk  # the chunk's fp32 grad, momentum, denominator
    assert got["measured_state_peak_bytes"] == 12 * n + temporaries
    assert CHUNK * 12 < 0.02 * 12 * 22_700_000  # MiniLM: the default chunk is under 2% of 12N


def test_mixed_12n_chunks_change_nothing_in_the_update() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(300, 70))
    b = torch.nn.Parameter(a.detach().clone())
    whole, chunked = Mixed12nAdamW([a], lr=1e-2), Mixed12nAdamW([b], lr=1e-2, chunk=1000)
    for step in range(3):
        g = torch.randn(300, 70, generator=torch.Generator().manual_seed(step)).bfloat16()
        a.grad, b.grad = g.clone(), g.clone()
        whole.step()
        chunked.step()
    assert torch.equal(a, b)
    assert torch.equal(whole.state[a]["exp_avg"], chunked.state[b]["exp_avg"])


# --- autocast: weight casts are not activations --------------------------------------------

def test_autocast_weight_copies_are_counted_apart_from_activations() -> None:
    """Under bf16 autocast w2's bf16 copy is saved for backward (the hidden input needs its
    gradient): the old saved-tensor peak counted it as an activation; here it is a weight cast."""
    b, d_in, d_hidden, d_out = 16, 128, 512, 256
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(d_in, d_hidden, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(d_hidden, d_out, bias=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(b, d_in)
    got = train_steps(model, optimizer, x, autocast=True)
    w1, w2 = d_in * d_hidden, d_hidden * d_out
    assert got["measured_max"]["weight_casts"] == BF16 * (w1 + w2)
    # Saved: x's bf16 copy (for w1's gradient) and the bf16 relu output (for w2's and for the
    # relu's own backward): no weight among them.
    assert got["measured_max"]["activations"] == BF16 * (b * d_in + b * d_hidden)
    assert got["measured_state_peak_bytes"] == 16 * (w1 + w2) + 2 * F32
    old = SavedTensorPeak(model_state(model))
    with old, torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    assert old.peak == BF16 * (b * d_in + b * d_hidden + w2)  # the weight copy included


# --- the harness meter ---------------------------------------------------------------------

def test_meter_measures_the_second_step_or_the_only_one() -> None:
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    x = torch.randn(2, 8)
    assert train_steps(model, optimizer, x, steps=1)["measured_step"] == 1
    meter = StepMeter(model, optimizer, steps_left=4)
    calls = []
    for _ in range(4):
        with meter.step({"x": x}):
            calls.append(meter.result.get("measured_step"))
    assert calls == [None, None, 2, 2]  # filled when the second step ends, and kept


def test_tracker_leaves_nothing_behind() -> None:
    """After the step: no mode, no saved-tensor hook, no optimizer hook, no weakref callback."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    model = torch.nn.Linear(16, 16)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    got = train_steps(model, optimizer, torch.randn(4, 16), steps=1)
    assert got["measured_peak_bytes"] > 0
    assert _get_current_dispatch_mode() is None
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    with SavedTensorPeak() as saved:  # our hooks are the top ones again
        model(torch.randn(4, 16)).sum().backward()
    assert saved.peak > 0


def test_categories_are_the_documented_ones() -> None:
    assert memtrack.STATE_CATEGORIES == ("weights_4bit", "quant_constants", "parameters",
                                         "gradients", "optimizer_state", "optimizer_temporaries")
    assert set(memtrack.CATEGORIES) >= {"parameters", "buffers", "gradients", "optimizer_state",
                                        "activations", "temporaries", "weight_casts"}


def test_storage_resized_in_place_is_followed() -> None:
    """FSDP2 frees and re-allocates its all-gathered weights with UntypedStorage.resize_."""
    model = torch.nn.Linear(4, 4)
    buf = torch.empty(256)  # 1 KiB, alive before the step
    tracker = StepTracker(model, None, [buf])
    with tracker:
        buf.untyped_storage().resize_(0)
        model(torch.ones(1, 4)).sum().backward()
        buf.untyped_storage().resize_(4096)  # 4 KiB again, in place
    got = tracker.summary()
    assert torch.UntypedStorage.resize_.__name__ == "resize_"  # torch's own again
    assert got["measured_max"]["inputs"] == 4096  # 1 KiB, then nothing, then 4 KiB
    assert got["measured_at_peak"]["inputs"] == 4096


@pytest.mark.gpu
def test_cuda_step_matches_the_allocator_and_fused_holds_16n() -> None:
    """On CUDA: the same categories; the allocator's maximum over the step is at least the
    tracker's peak, and above it only by what the tracker cannot see (cuBLAS workspaces,
    rounding, kernels' scratch)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Linear(4096, 4096, bias=False).to(device)
    optimizer = make_adamw([{"params": list(model.parameters()), "weight_decay": 0.01}], 1e-3,
                           "bf16-mixed", "auto")
    assert optimizer_impl(optimizer) == "fused"
    x = torch.randn(64, 4096, device=device)
    meter = StepMeter(model, optimizer, 2)
    for _ in range(2):
        with meter.step({"x": x}):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss
    got = meter.result
    n = 4096 * 4096
    assert got["measured_state_peak_bytes"] == 16 * n + F32
    assert got["measured_max"]["weight_casts"] == BF16 * n
    assert got["cuda_max_allocated_bytes"] >= got["measured_peak_bytes"]
    assert got["cuda_max_allocated_bytes"] - got["measured_peak_bytes"] < 128 * 2**20
