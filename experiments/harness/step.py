"""One optimizer step as every run takes it: the optimizer, its schedule, the loss and the update.

The training loop (`experiments.harness.loop`) and the benchmarks (`bench.workloads`) both step
through these functions, so a benchmark times what a run runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from experiments.harness.batching import IGNORE_INDEX
from experiments.harness.config import Config, UserError
from experiments.harness.optim import make_adamw
from experiments.harness.runtime import Context
from methods import METHODS


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops before the optimizer applies it."""


def build_optimizer(model: torch.nn.Module, cfg: Config,
                    precision: str | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only; no weight decay on biases and norms.

    `precision` (default `cfg.precision`) picks the state layout: mixed-12n keeps bf16
    gradients and momentum (`experiments.harness.optim.Mixed12nAdamW`), the others torch's AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"method {cfg.method!r} left no parameter trainable")
    # A method's optional `lr_scales` hook: parameters that learn at a multiple of lr (LoRA+).
    spec = METHODS.get(cfg.method)
    hook = spec.lr_scales if spec is not None and cfg.method_cfg is not None else None
    scales = {id(p): s for p, s in (hook(model, cfg.method_cfg) if hook else {}).items()}
    groups = []
    for s in dict.fromkeys([1.0, *scales.values()]):
        mine = [p for p in params if scales.get(id(p), 1.0) == s]
        groups += [{"params": [p for p in mine if p.ndim >= 2], "weight_decay": cfg.weight_decay,
                    "lr": cfg.lr * s},
                   {"params": [p for p in mine if p.ndim < 2], "weight_decay": 0.0,
                    "lr": cfg.lr * s}]
    return make_adamw([g for g in groups if g["params"]], cfg.lr, precision or cfg.precision,
                      cfg.optimizer_impl)


def warmup_linear(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then linear decay to 0 at `total_steps`."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def forward_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: Context,
                     rows: float | None = None) -> torch.Tensor:
    """The loss of one batch (on the device, under the run's autocast), backpropagated.

    The cross-entropy is summed over the batch's labelled rows and divided by `rows` (default:
    those rows, the mean). Under several processes `rows` is the global batch's rows over the
    world size: DDP then averages the ranks' gradients into the single-process mean, also for a
    short last batch whose rows are unevenly spread (a padding row's label is ignored)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    with ctx.autocast():
        logits = model(**inputs).logits
    loss = F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=IGNORE_INDEX)
    loss = loss / (rows if rows is not None else (labels != IGNORE_INDEX).sum().clamp(min=1))
    loss.backward()
    return loss


def apply_update(optimizer: torch.optim.Optimizer, trainable: list[torch.Tensor],
                 max_grad_norm: float) -> None:
    """Clip the gradients, take the optimizer step, and free the gradients."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
