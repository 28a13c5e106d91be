"""(IA)³ (Liu et al. 2022): learned vectors rescale the keys, the values and the MLP's
intermediate activations; the backbone is frozen, the vectors (initialised to ones) and the head
train.

A key or value layer's output is multiplied by its vector, `l ⊙ (W x + b)`; the MLP's down
projection (the layer from the intermediate size back to the hidden size) has its input
multiplied, `W (l ⊙ x) + b`: exactly PEFT's `IA3Config` forward (output scaling, and
`feedforward_modules` input scaling). The default targets per block, on the tiny test models:

| architecture   | keys, values (output scaled)     | MLP (input scaled) |
| -------------- | -------------------------------- | ------------------ |
| BERT, RoBERTa  | attention.self.{key,value}       | output.dense       |
| DistilBERT     | attention.{k_lin,v_lin}          | ffn.lin2           |
| GPT-2          | attn.c_attn (fused q, k, v)      | mlp.c_proj         |
| LLaMA          | self_attn.{k_proj,v_proj}        | mlp.down_proj      |

They are PEFT's defaults (`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`) with one
difference: PEFT's BERT/RoBERTa entry `output.dense` is a name suffix that also catches
`attention.output.dense` and scales the attention output's input as well; ours scales the
MLP's only, as the paper does. GPT-2 computes q, k and v in one layer, so its vector (3 x hidden)
also scales the queries, as PEFT's does. `ia3.targets` also takes LoRA's selectors (names, a
regex, `attention`, `mlp`, `all`); a selected MLP down projection is always input-scaled.
`merge` folds the vectors into W (and b) for zero-overhead inference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from methods.base import MethodError
from methods.model import param_split
from methods.targets import block_path, layer_role, linear_layers, select_targets

# A few thousand multipliers around 1 need a large step (the paper: 3e-3 with Adafactor). Chosen
# on a rotten_tomatoes subsample (1 epoch): validation 0.698 at 3e-3, 0.776 at 1e-2, 0.768 at
# 3e-2. No decay: it would pull the vectors towards 0, not towards
# their start at 1 (the harness never decays 1-D tensors anyway).
PRESET = {"lr": 1e-2, "epochs": 2, "weight_decay": 0.0}

# Leaf names of key / value projections, separate or fused with the query.
_KEY_VALUE = re.compile(r"^(k|v|key|value)(_proj|_lin)?$"
                        r"|^(c_attn|qkv|qkv_proj|query_key_value|Wqkv)$")


@dataclass
class Config:
    """Options of the (IA)³ method."""

    targets: str = "default"  # default (keys, values, MLP down projection) | LoRA's selectors

    def validate(self) -> None:
        """Reject option values that can never work."""
        if not self.targets.strip():
            raise MethodError("ia3.targets is empty; use default, or LoRA's selectors")


class IA3Linear(nn.Module):
    """A frozen nn.Linear or GPT-2 Conv1D whose output (or, feed-forward, input) is rescaled by a
    trained vector."""

    def __init__(self, base: nn.Module, feedforward: bool) -> None:
        super().__init__()
        self.fan_in_fan_out = isinstance(base, Conv1D)  # Conv1D stores W as (in, out)
        # The base layer's own Parameters under the same names: checkpoints keep loading.
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        w = base.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.fan_in_fan_out \
            else (w.shape[1], w.shape[0])
        self.feedforward = feedforward
        size = self.in_features if feedforward else self.out_features
        # Ones: the model starts as the base model.
        self.ia3_scale = nn.Parameter(torch.ones(size, dtype=w.dtype, device=w.device))
        self.merged = False

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b, as the wrapped layer computes it."""
        if self.fan_in_fan_out:
            out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)
            return out.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """W (l ⊙ x) + b for the feed-forward layer, l ⊙ (W x + b) otherwise."""
        if self.merged:
            return self.base_forward(x)
        if self.feedforward:
            return self.base_forward(x * self.ia3_scale.to(x.dtype))
        out = self.base_forward(x)
        return out * self.ia3_scale.to(out.dtype)

    def _weight_factor(self, scale: torch.Tensor) -> torch.Tensor:
        """The vector shaped to multiply W's inputs (feed-forward) or outputs, in W's layout."""
        # Linear stores (out, in), Conv1D (in, out): the scaled side lies along W's rows when
        # it is the inputs of a Conv1D or the outputs of a Linear.
        along_rows = self.feedforward == self.fan_in_fan_out
        return scale.view(-1, 1) if along_rows else scale.view(1, -1)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the vector into W (and b, for output scaling)."""
        if self.merged:
            return
        self.weight.mul_(self._weight_factor(self.ia3_scale))
        if not self.feedforward and self.bias is not None:
            self.bias.mul_(self.ia3_scale)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide the vector back out (exact up to rounding; a zero entry cannot be undone)."""
        if not self.merged:
            return
        self.weight.div_(self._weight_factor(self.ia3_scale))
        if not self.feedforward and self.bias is not None:
            self.bias.div_(self.ia3_scale)
        self.merged = False

    def extra_repr(self) -> str:
        """Shapes and which side is scaled, for print(model)."""
        side = "input" if self.feedforward else "output"
        return f"in={self.in_features}, out={self.out_features}, scales={side}"


def _is_down_projection(model: nn.Module, name: str, layer: nn.Module) -> bool:
    """An MLP layer from a wider intermediate back to the hidden size."""
    inner = block_path(name)
    if inner is None or layer_role(inner) != "mlp":
        return False
    n_in, n_out = (layer.weight.shape[0], layer.weight.shape[1]) if isinstance(layer, Conv1D) \
        else (layer.weight.shape[1], layer.weight.shape[0])
    return n_out == model.config.hidden_size and n_in != n_out


def select(model: nn.Module, targets: str) -> dict[str, bool]:
    """Layer path -> whether it is feed-forward (input-scaled), for `targets`."""
    layers = linear_layers(model)
    if targets.strip() == "default":
        chosen = [n for n in layers if (inner := block_path(n)) is not None
                  and ((layer_role(inner) == "attention"
                        and _KEY_VALUE.search(inner.rsplit(".", 1)[-1]))
                       or _is_down_projection(model, n, layers[n]))]
        if not chosen:
            raise MethodError(f"ia3: found no key/value or MLP down projection in the "
                              f"{model.config.model_type} backbone; name them with ia3.targets")
    else:
        chosen = select_targets(model, targets, "ia3.targets")
    return {n: _is_down_projection(model, n, layers[n]) for n in chosen}


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    """The model's (IA)³ layers by full path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, IA3Linear)}


def apply(model: nn.Module, cfg: Config) -> dict:
    """Wrap the targets, freeze the backbone, train the vectors and the head."""
    cfg.validate()
    if ia3_layers(model):
        raise MethodError("the model already has (IA)³ layers; apply ia3 once, to a fresh model")
    chosen = select(model, cfg.targets)
    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(False)
    for name, feedforward in chosen.items():
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent], leaf, IA3Linear(modules[name], feedforward))
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    vectors = sum(m.ia3_scale.numel() for m in ia3_layers(model).values())
    assert param_split(model)["adapter"] == vectors
    inner = list(dict.fromkeys(block_path(n) or n for n in chosen))
    return {"trains": f"(IA)³ vectors on {len(chosen)} layers + classifier head",
            "head_trained": True, "layers": len(chosen), "target_modules": inner,
            "feedforward_modules": [p for p in inner if any(
                ff and (block_path(n) or n) == p for n, ff in chosen.items())],
            "adapter_params": vectors}


def merge(model: nn.Module) -> int:
    """Fold every vector into its layer; returns how many layers."""
    layers = ia3_layers(model)
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge(model: nn.Module) -> int:
    """Take every vector back out of its layer; returns how many layers."""
    layers = ia3_layers(model)
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def export_peft(model: nn.Module, out_dir: str | Path) -> Path:
    """Write PEFT's (IA)³ format (adapter_config.json, adapter_model.safetensors; names as in the
    transformers model, see `methods.peft_format`), which PEFT loads without this code."""
    from methods import peft_format

    layers = ia3_layers(model)
    if not layers:
        raise MethodError("the model has no (IA)³ layers; call methods.ia3.apply first")
    # PEFT keeps an output vector as (out, 1) and an input (feed-forward) vector as (1, in).
    tensors = {f"{name}.ia3_l": m.ia3_scale.view(1, -1) if m.feedforward
               else m.ia3_scale.view(-1, 1) for name, m in layers.items()}
    config = {"peft_type": "IA3", "init_ia3_weights": True,
              "target_modules": sorted(peft_format.hf_name(model, n) for n in layers),
              "feedforward_modules": sorted(peft_format.hf_name(model, n)
                                            for n, m in layers.items() if m.feedforward),
              "fan_in_fan_out": any(m.fan_in_fan_out for m in layers.values())}
    return peft_format.write_adapter(model, out_dir, config, tensors, [])


def save(model: nn.Module, out_dir: str | Path) -> dict[str, str]:
    """Harness hook: the PEFT folder, in `out_dir` itself (the harness also keeps every trained
    tensor by name, which it reloads: there is no `load` hook)."""
    export_peft(model, out_dir)
    return {"peft": "."}
