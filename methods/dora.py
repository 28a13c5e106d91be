"""DoRA (Liu et al. 2024): LoRA with each weight split into a magnitude and a direction.

A targeted layer computes `W' x + b` with `W' = m * (W + s B A) / ||W + s B A||_c`: the
direction is LoRA's updated weight, normalised per output unit (the norm over the input
dimension of each row of the (out, in) matrix), and `m` is a trained vector of one magnitude per
output, initialised to `||W||_c` so the model starts as the base model. As in the paper (section
4.3) and PEFT, the norm is treated as a constant in the backward pass (detached).

The targets, options (`rank`, `alpha`, `targets`, `scaling=rslora`, `lr_ratio`, ...) and the
`merge` / `save_adapter` / `export_peft` verbs are LoRA's (`methods.lora`); `merge` folds `W'`
into the weight, so merged inference costs what the base layer costs. What DoRA adds per layer is
`out` magnitude parameters and, every step, the norm of an (out, in) matrix: the extra cost that
`make bench` shows next to LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from methods import lora

# Chosen on a rotten_tomatoes subsample (1 epoch): validation 0.716 at LoRA's 5e-4, 0.764 at
# 1e-3 (LoRA at 5e-4 there: 0.704).
PRESET = {"lr": 1e-3, "epochs": 2}


@dataclass
class Config(lora.Config):
    """Options of DoRA: LoRA's, under the `dora.` prefix."""

    name: ClassVar[str] = "dora"


class DoRALinear(lora.LoRALinear):
    """A frozen nn.Linear or Conv1D as magnitude times the normalised LoRA-updated direction."""

    label = "DoRA"
    use_dora = True

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 init: str = "kaiming", use_rslora: bool = False) -> None:
        super().__init__(base, rank, alpha, dropout, init, use_rslora)
        # B is zero at init, so this is ||W||_c: the layer starts as the base layer.
        self.magnitude = nn.Parameter(self.weight_norm().detach().to(self.weight.dtype))
        self._merge_scale: torch.Tensor | None = None  # m / norm used by merge, for unmerge

    def out_in_weight(self) -> torch.Tensor:
        """W as (out, in), whatever the storage layout (Conv1D keeps (in, out))."""
        return self.weight.T if self.fan_in_fan_out else self.weight

    def weight_norm(self) -> torch.Tensor:
        """||W + s B A||_c: the L2 norm of each output row over the input dimension."""
        lora_weight = self.lora_B.weight @ self.lora_A.weight
        return torch.linalg.norm(self.out_in_weight() + self.scaling * lora_weight, dim=1)

    def num_adapter_params(self) -> int:
        """LoRA's r * (in + out) plus one magnitude per output."""
        return super().num_adapter_params() + self.out_features

    def peft_tensors(self) -> dict[str, torch.Tensor]:
        """LoRA's tensors plus the magnitude, under PEFT's key."""
        return {**super().peft_tensors(), "lora_magnitude_vector": self.magnitude}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(m / ||W + s B A||_c) * (W x + s B A x) + b; with dropout active, PEFT's form."""
        if self.merged:
            return self.base_forward(x)
        w = self.out_in_weight()
        # A constant in the backward, as the paper suggests: the norm follows B A but passes no
        # gradient (so no graph is recorded for the (out, in) sum either).
        with torch.no_grad():
            norm = self.weight_norm()
        scale = (self.magnitude / norm).to(x.dtype)
        dropout_active = self.training and not isinstance(self.lora_dropout, nn.Identity)
        xd = self.lora_dropout(x) if dropout_active else x
        h = self.lora_A(xd)
        base = F.linear(xd, w)
        # W xd + s B A xd in one GEMM on top of W xd (as LoRALinear does).
        direction = torch.addmm(base.reshape(-1, self.out_features), h.reshape(-1, self.rank),
                                self.lora_B.weight.T, alpha=self.scaling).view(base.shape)
        if not dropout_active:
            out = direction * scale
            return out + self.bias.to(out.dtype) if self.bias is not None else out
        # PEFT's training form under dropout: the base layer sees x, the DoRA term sees dropout(x):
        # W x + b + (scale - 1) W xd + scale s B A xd.
        return self.base_forward(x) + direction * scale - base

    @torch.no_grad()
    def merge(self) -> None:
        """Fold m * (W + s B A) / norm into W (bias unchanged): base-layer inference cost."""
        if self.merged:
            return
        scale = (self.magnitude.float() / self.weight_norm().float()).unsqueeze(1)  # (out, 1)
        merged = scale * (self.out_in_weight().float() + self.delta_weight_out_in())
        self.weight.copy_((merged.T if self.fan_in_fan_out else merged).to(self.weight.dtype))
        self._merge_scale = scale
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Recover W from the merged weight (exact up to float rounding)."""
        if not self.merged:
            return
        scale = self._merge_scale
        w = self.out_in_weight().float() / scale - self.delta_weight_out_in()
        self.weight.copy_((w.T if self.fan_in_fan_out else w).to(self.weight.dtype))
        self._merge_scale = None
        self.merged = False

    def delta_weight_out_in(self) -> torch.Tensor:
        """s B A as (out, in) in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling


def apply(model: nn.Module, cfg: Config) -> dict:
    """Wrap LoRA's targets in DoRA layers, freeze the backbone, train adapters, magnitudes and
    the head."""
    info = lora.wrap_targets(model, cfg, DoRALinear)
    info["magnitude_params"] = sum(m.out_features for m in lora.lora_layers(model).values())
    return info


lr_scales = lora.lr_scales  # LoRA+ on DoRA: B at lr_ratio times the lr, magnitudes at the lr
merge, unmerge = lora.merge, lora.unmerge
save_adapter, load_adapter, export_peft = lora.save_adapter, lora.load_adapter, lora.export_peft
save, load = lora.save, lora.load  # harness hooks: adapter file + PEFT folder
