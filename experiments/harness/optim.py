"""Optimizers by precision: torch's AdamW, or AdamW in the lecture's 12N mixed-precision layout.

The lecture's mixed-precision budget is 12 bytes per trainable parameter: fp32 weights (4),
bf16 gradients (2), bf16 momentum (2) and an fp32 second moment (4). torch's AdamW keeps its
state in the parameter's dtype (16 bytes per parameter with fp32 weights), so `Mixed12nAdamW`
holds that layout itself: it asks autograd to deliver gradients in bf16 (`Tensor.grad_dtype`,
torch >= 2.10), keeps `exp_avg` in bf16 and `exp_avg_sq` in fp32, and does the arithmetic of
each update in fp32.

`optimizer_impl` picks how the update runs (`make_adamw`): torch's fused kernel (one kernel over
every parameter, no full-size temporaries), its foreach path (one op per step of the update over
every parameter at once: the square root of the second moment is a temporary as large as the
second moment itself), or its per-parameter loop (temporaries of one parameter at a time). The
default, auto, is fused wherever torch supports the device and dtype, else foreach.
`Mixed12nAdamW` exists for the 12N budget, and torch's fused and foreach kernels need the state
in the parameter's dtype: it runs only as a loop, in chunks, so its temporaries stay small.

`optimizer_impl=adamw8bit` is bitsandbytes' AdamW8bit (Dettmers et al. 2022): both moments in
8 bits, block-wise (an fp32 absmax per 256 elements), 2 bytes per parameter instead of 8, with
fp32 weights and gradients: 4N + 4N + 2N. bitsandbytes keeps fp32 moments for tensors under
`min_8bit_size` = 4096 elements (biases, norms, small adapters: 8 bytes each) and two 256-value
quantile maps shared by all tensors; `adamw8bit_state_bytes` counts exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from experiments.harness.config import UserError

OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop", "adamw8bit")
# bitsandbytes' 8-bit AdamW layout (its defaults, which `adamw8bit` keeps).
MIN_8BIT_SIZE = 4096  # smaller tensors keep fp32 moments
BLOCK_8BIT = 256  # elements per fp32 absmax of each 8-bit moment
QMAPS_BYTES = 2 * 256 * 4  # the two quantile maps (signed, unsigned), shared by every tensor
# Mixed12nAdamW updates a parameter this many elements at a time: its fp32 temporaries (the
# gradient, the momentum and the denominator of one chunk) are then 12 bytes x 2**18 = 3 MiB at
# most, instead of 12 bytes per element of the largest parameter (MiniLM's word embedding: 141 MB,
# half of its whole 12N).
CHUNK = 2**18


class Mixed12nAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with bf16 gradients and momentum, fp32 second moment.

    Constructing it sets `grad_dtype` on its parameters, so the autograd engine casts each
    incoming gradient to bf16 before accumulating it: `p.grad` is bf16 and torch's own
    `clip_grad_norm_` and `zero_grad` work unchanged. The step counter is a Python int, so the
    state holds no per-parameter scalar tensors. Each update runs `chunk` elements at a time
    (`optimizer_impl=loop`, the only one it has).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, grad_dtype: torch.dtype = torch.bfloat16,
                 momentum_dtype: torch.dtype = torch.bfloat16, chunk: int = CHUNK) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.momentum_dtype = momentum_dtype
        self.chunk = chunk
        self.impl = "loop"
        for group in self.param_groups:
            for p in group["params"]:
                if not hasattr(p, "grad_dtype"):
                    raise UserError("precision=mixed-12n needs torch>=2.10 (Tensor.grad_dtype "
                                    f"keeps gradients in bf16); this is torch {torch.__version__}")
                if p.grad is not None and p.grad.dtype != grad_dtype:
                    p.grad = None  # grad_dtype cannot be set over a gradient of another dtype
                p.grad_dtype = grad_dtype

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a saved state, keeping the 12N layout (torch casts state to the param dtype)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "exp_avg" in state:
                state["exp_avg"] = state["exp_avg"].to(self.momentum_dtype)
                state["exp_avg_sq"] = state["exp_avg_sq"].float()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One AdamW update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.momentum_dtype,
                                                        memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32,
                                                           memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                for p_, g, m, v in self._chunks(p, p.grad, state["exp_avg"], state["exp_avg_sq"]):
                    # fp32 temporaries for one chunk at a time: the update is computed at full
                    # precision and only the stored momentum is rounded to bf16.
                    grad = g.float()
                    exp_avg = m.float().lerp_(grad, 1 - beta1)
                    m.copy_(exp_avg)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    if wd:
                        p_.mul_(1 - lr * wd)
                    denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)
                    p_.addcdiv_(exp_avg.to(p_.dtype), denom.to(p_.dtype),
                                value=-lr / (1 - beta1 ** t))
                    # Freed now, not when the next chunk rebinds the names (a fourth chunk).
                    del grad, exp_avg, denom
        return loss

    def _chunks(self, *tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Matching flat slices of a parameter, its gradient and state (whole if not contiguous)."""
        if not all(t.is_contiguous() for t in tensors):
            return [tensors]
        flat = [t.view(-1) for t in tensors]
        n = flat[0].numel()
        return [tuple(f[i:i + self.chunk] for f in flat) for i in range(0, n, self.chunk)]


def make_adamw(groups: list[dict[str, Any]], lr: float, precision: str,
               impl: str = "auto") -> torch.optim.Optimizer:
    """AdamW for a precision mode and implementation (see the module doc; `optimizer_impl`)."""
    if impl == "adamw8bit":
        return adamw8bit(groups, lr, precision)
    if precision == "mixed-12n":
        if impl not in ("auto", "loop"):
            raise UserError(f"optimizer_impl={impl} does not apply to precision=mixed-12n: its "
                            "12N layout (bf16 momentum, fp32 second moment) is our own AdamW, "
                            "which runs as a chunked loop (optimizer_impl=loop or auto); torch's "
                            "fused and foreach kernels keep the state in the parameter's dtype")
        return Mixed12nAdamW(groups, lr=lr)
    # fp32 and bf16-mixed (autocast) both keep fp32 weights, gradients and state: 16 bytes/param.
    if impl in ("auto", "fused"):
        problem = fused_unsupported([p for g in groups for p in g["params"]])
        if problem is None:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        if impl == "fused":
            raise UserError(f"optimizer_impl=fused: {problem}; use foreach or loop")
    return torch.optim.AdamW(groups, lr=lr, foreach=impl != "loop")


def adamw8bit(groups: list[dict[str, Any]], lr: float, precision: str) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit over fp32 weights (see the module doc)."""
    from methods.quantize import import_bnb

    if precision == "mixed-12n":
        raise UserError("optimizer_impl=adamw8bit does not apply to precision=mixed-12n (bf16 "
                        "gradients and momentum): use precision=fp32 or bf16-mixed")
    if any(hasattr(p, "to_local") for g in groups for p in g["params"]):
        raise UserError("optimizer_impl=adamw8bit cannot step FSDP's sharded parameters; use "
                        "dist=ddp or optimizer_impl=auto")
    optimizer = import_bnb().optim.AdamW8bit(groups, lr=lr, min_8bit_size=MIN_8BIT_SIZE)
    optimizer.impl = "adamw8bit"
    return optimizer


def adamw8bit_state_bytes(numels: list[int]) -> int:
    """Bytes of AdamW8bit's state for trained tensors of these sizes: 2 bytes per element plus
    two fp32 absmax per 256 in tensors >= 4096 elements, 8 bytes per element in smaller ones,
    and the shared quantile maps."""
    big = [n for n in numels if n >= MIN_8BIT_SIZE]
    small = sum(n for n in numels if n < MIN_8BIT_SIZE)
    return (sum(2 * n + 2 * 4 * -(-n // BLOCK_8BIT) for n in big) + 8 * small
            + (QMAPS_BYTES if big else 0))


def fused_unsupported(params: list[torch.Tensor]) -> str | None:
    """Why torch's fused AdamW cannot step these parameters, or None if it can.

    torch makes this check only when the first step creates the state, so it is asked here, with
    torch's own test, before the run starts."""
    from torch.optim.optimizer import _device_dtype_check_for_fused

    for p in params:
        try:
            _device_dtype_check_for_fused(p)
        except RuntimeError as exc:
            return str(exc)
    return None


def optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    """Which implementation an optimizer from `make_adamw` runs: fused, foreach, loop or
    adamw8bit."""
    if hasattr(optimizer, "impl"):  # Mixed12nAdamW, AdamW8bit
        return optimizer.impl
    defaults = optimizer.defaults
    if defaults.get("fused"):
        return "fused"
    return "foreach" if defaults.get("foreach") else "loop"
