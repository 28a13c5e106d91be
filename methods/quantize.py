"""QLoRA's frozen base (Dettmers et al. 2023): the backbone's linear weights in 4 bits.

`lora.quantize=nf4` (or `fp4`) turns every nn.Linear / GPT-2 Conv1D of the backbone into a
frozen `bitsandbytes.nn.Linear4bit` holding the same weight, quantised once on the CPU when the
model is built; LoRA (`methods.lora`) then wraps those layers, so the adapters train in full
precision on top of a 4-bit base, as the paper does. The embeddings, norms, biases and the
classifier head keep their precision.

bitsandbytes stores a weight of n elements as n/2 bytes of 4-bit codes, in blocks of
`BLOCKSIZE` = 64 elements, each block with its own absmax scale: an fp32 scale per block
(4 bytes / 64 = 0.0625 bytes per weight), or with double quantisation (`lora.double_quant`,
the paper's default) an 8-bit scale per block plus one fp32 scale per 256 blocks (0.0157 bytes
per weight). Each layer also keeps the 16-value code table and, double-quantised, the 256-value
table of the scales and one fp32 offset. `constant_bytes` is that count in closed form; the
memory measurement files the codes (`quantized_tensors`) and the constants apart.

A forward pass dequantises one layer's weight to fp32 at a time (a temporary as large as the
fp32 weight, freed after the layer's matmul), and the backward does it again to reach the
input's gradient: QLoRA trades compute for memory, on CPU much more than on CUDA.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from methods.base import MethodError

QUANT_TYPES = ("none", "nf4", "fp4")
BLOCKSIZE = 64  # elements per absmax scale (bitsandbytes' default for 4-bit weights)
NESTED_BLOCKSIZE = 256  # scales per fp32 scale under double quantisation (fixed by bitsandbytes)
CODE_BYTES = 16 * 4  # the 4-bit code table: 16 fp32 values, one per layer
NESTED_CODE_BYTES = 256 * 4 + 4  # the 8-bit table of the scales (256 fp32) and the fp32 offset


def import_bnb() -> Any:
    """bitsandbytes, imported without its optional kernels hub.

    On CPUs with AVX512-BF16 bitsandbytes tries at import to fetch a fused inference kernel from
    the Hugging Face hub (the `kernels` package, which transformers installs). A run must not
    reach the network, and training never uses that kernel (it serves inference only), so the
    import sees no `kernels` module and bitsandbytes keeps its own CPU kernels, quietly."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    saved = sys.modules.get("kernels")
    sys.modules["kernels"] = None  # type: ignore[assignment]  # makes `import kernels` fail
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = log.level
    log.setLevel(logging.ERROR)  # the "failed to load from kernels-community" warning
    try:
        import bitsandbytes
    finally:
        log.setLevel(level)
        if saved is None:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = saved
    return bitsandbytes


def validate(quant_type: str, key: str) -> None:
    """A MethodError for a quantisation type bitsandbytes does not have."""
    if quant_type not in QUANT_TYPES:
        raise MethodError(f"{key}={quant_type!r} is not one of: {', '.join(QUANT_TYPES)}")


def is_4bit(t: Any) -> bool:
    """Whether a tensor is a bitsandbytes 4-bit weight (codes plus a quantisation state)."""
    return getattr(t, "quant_state", None) is not None and getattr(t, "bnb_quantized", False)


def backbone_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / Conv1D of the backbone by full path, not yet quantised."""
    return {n: m for n, m in model.backbone.named_modules(prefix="backbone")
            if isinstance(m, (nn.Linear, Conv1D)) and not is_4bit(m.weight)}


def to_4bit(layer: nn.Module, quant_type: str, double_quant: bool) -> nn.Module:
    """A frozen Linear4bit with `layer`'s weight (Conv1D's (in, out) weight transposed) and bias."""
    bnb = import_bnb()
    w = layer.weight.detach()
    w = w.T if isinstance(layer, Conv1D) else w
    out_f, in_f = w.shape
    q = bnb.nn.Linear4bit(in_f, out_f, bias=layer.bias is not None, compute_dtype=w.dtype,
                          compress_statistics=double_quant, quant_type=quant_type,
                          device="meta")
    q.weight = bnb.nn.Params4bit(w.contiguous(), requires_grad=False, blocksize=BLOCKSIZE,
                                 compress_statistics=double_quant, quant_type=quant_type,
                                 module=q)
    if layer.bias is not None:
        q.bias = nn.Parameter(layer.bias.detach(), requires_grad=False)
    # One layout for training and evaluation: on AVX512-BF16 CPUs bitsandbytes would repack
    # the codes for inference at the first eval forward, and the next training step would read
    # the repacked form through another kernel.
    q.support_avx512bf16_for_cpu = False
    return q.to(w.device)  # quantises here (Params4bit quantises on its first move)


def quantize_backbone(model: nn.Module, quant_type: str, double_quant: bool) -> dict[str, Any]:
    """Replace the backbone's linear layers by frozen 4-bit ones; info for the record."""
    if quant_type == "none":
        return {}
    layers = backbone_linears(model)
    if not layers:
        raise MethodError(f"quantize={quant_type}: the backbone of {model.config.model_type} has "
                          "no linear layer to quantise")
    modules = dict(model.named_modules())
    numel = 0
    for name, layer in layers.items():
        parent, _, leaf = name.rpartition(".")
        numel += layer.weight.numel()
        setattr(modules[parent], leaf, to_4bit(layer, quant_type, double_quant))
    return {"quantize": quant_type, "double_quant": double_quant, "quantized_layers": len(layers),
            "quantized_params": numel, "blocksize": BLOCKSIZE}


def linear4bit(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b with W in 4 bits (dequantised one layer at a time), in W's compute dtype."""
    bnb = import_bnb()
    state = weight.quant_state
    y = bnb.matmul_4bit(x.to(state.dtype), weight, quant_state=state,
                        bias=None if bias is None else bias.to(state.dtype))
    return y.to(x.dtype)


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """A 4-bit weight back in its original dtype, (out, in): what the layer computes with."""
    bnb = import_bnb()
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)


def state_tensors(weight: torch.Tensor) -> list[torch.Tensor]:
    """A 4-bit weight's quantisation constants: scales, code tables, offset (nested too)."""
    out = []
    for state in (weight.quant_state, getattr(weight.quant_state, "state2", None)):
        if state is not None:
            out += [t for t in (state.absmax, state.code, getattr(state, "offset", None))
                    if isinstance(t, torch.Tensor)]
    return out


def quantized_tensors(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the model's 4-bit weights, their quantisation constants)."""
    weights = [p for p in model.parameters() if is_4bit(p)]
    return weights, [t for w in weights for t in state_tensors(w)]


def constant_bytes(numel: int, double_quant: bool) -> int:
    """Bytes of one layer's quantisation constants for a weight of `numel` elements."""
    blocks = math.ceil(numel / BLOCKSIZE)
    if not double_quant:
        return 4 * blocks + CODE_BYTES
    return blocks + 4 * math.ceil(blocks / NESTED_BLOCKSIZE) + CODE_BYTES + NESTED_CODE_BYTES


def layout(model: nn.Module) -> dict[str, int]:
    """What the formula needs of a quantised model: 4-bit elements, their bytes (n/2, and the
    constants in closed form), from each layer's shape and settings."""
    weights, _ = quantized_tensors(model)
    numel = sum(math.prod(w.quant_state.shape) for w in weights)
    constants = sum(constant_bytes(math.prod(w.quant_state.shape), w.quant_state.nested)
                    for w in weights)
    return {"quantized_params": numel, "quantized_weight_bytes": sum(
        math.ceil(math.prod(w.quant_state.shape) / 2) for w in weights),
        "quant_constant_bytes": constants}
