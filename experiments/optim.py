"""Optimizers by precision: torch's AdamW, or AdamW in the lecture's 12N mixed-precision layout.

The lecture's mixed-precision budget is 12 bytes per trainable parameter: fp32 weights (4),
bf16 gradients (2), bf16 momentum (2) and an fp32 second moment (4). torch's AdamW keeps its
state in the parameter's dtype (16 bytes per parameter with fp32 weights), so `Mixed12nAdamW`
holds that layout itself: it asks autograd to deliver gradients in bf16 (`Tensor.grad_dtype`,
torch >= 2.10), keeps `exp_avg` in bf16 and `exp_avg_sq` in fp32, and does the arithmetic of
each update in fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from experiments.config import UserError


class Mixed12nAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with bf16 gradients and momentum, fp32 second moment.

    Constructing it sets `grad_dtype` on its parameters, so the autograd engine casts each
    incoming gradient to bf16 before accumulating it: `p.grad` is bf16 and torch's own
    `clip_grad_norm_` and `zero_grad` work unchanged. The step counter is a Python int, so the
    state holds no per-parameter scalar tensors.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, grad_dtype: torch.dtype = torch.bfloat16,
                 momentum_dtype: torch.dtype = torch.bfloat16) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.momentum_dtype = momentum_dtype
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
                # fp32 temporaries for one parameter at a time: the update is computed at full
                # precision and only the stored momentum is rounded to bf16.
                grad = p.grad.float()
                exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                state["exp_avg"].copy_(exp_avg)
                exp_avg_sq = state["exp_avg_sq"]
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if wd:
                    p.mul_(1 - lr * wd)
                denom = (exp_avg_sq / (1 - beta2 ** t)).sqrt_().add_(eps)
                p.addcdiv_(exp_avg.to(p.dtype), denom.to(p.dtype), value=-lr / (1 - beta1 ** t))
        return loss


def make_adamw(groups: list[dict[str, Any]], lr: float, precision: str) -> torch.optim.Optimizer:
    """AdamW for a precision mode: the 12N layout for mixed-12n, torch's AdamW otherwise."""
    if precision == "mixed-12n":
        return Mixed12nAdamW(groups, lr=lr)
    # fp32 and bf16-mixed (autocast) both keep fp32 weights, gradients and state: 16 bytes/param.
    return torch.optim.AdamW(groups, lr=lr)
