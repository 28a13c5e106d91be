"""Which linear layers of a backbone a method targets: `all`, `attention`, `mlp`, names or a regex.

LoRA, DoRA and (IA)³ select their layers here (`<method>.targets`), by the layer's path inside
its transformer block and its role (attention or MLP, read from the modules above it).
"""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from methods.base import MethodError

KEYWORDS = ("all", "attention", "mlp")
_REGEX_CHARS = set("^$*+?()[]{}|\\")
_ATTN_PARENT = re.compile(r"attn|attention", re.IGNORECASE)
# Only for a linear layer sitting directly in a block (no parent module to read the role from).
_ATTN_LEAF = re.compile(r"attn|attention|^(q|k|v|o|qkv|query|key|value)(_proj|_lin)?$",
                        re.IGNORECASE)


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / Conv1D of the backbone by full path (the classifier head is outside)."""
    return {name: m for name, m in model.backbone.named_modules(prefix="backbone")
            if isinstance(m, (nn.Linear, Conv1D))}


def block_path(name: str) -> str | None:
    """The path inside its transformer block (after the first integer segment), else None."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[i + 1:])
    return None


def layer_role(inner: str) -> str:
    """`attention` or `mlp` for a path inside a block, decided by the modules above the leaf."""
    *parents, leaf = inner.split(".")
    if parents:
        return "attention" if any(_ATTN_PARENT.search(p) for p in parents) else "mlp"
    return "attention" if _ATTN_LEAF.search(leaf) else "mlp"


def _available(layers: dict[str, nn.Module]) -> str:
    """What a user could target, for an error message: paths per block and the rest."""
    inner = list(dict.fromkeys(p for n in layers if (p := block_path(n)) is not None))
    outside = [n for n in layers if block_path(n) is None]
    text = "per block: " + (", ".join(inner) or "none")
    return text + (f"; outside blocks: {', '.join(outside)}" if outside else "")


def select_targets(model: nn.Module, targets: str, key: str = "lora.targets") -> list[str]:
    """Full paths of the layers `targets` names; a MethodError (listing what exists) if none."""
    layers = linear_layers(model)
    spec = targets.strip()
    hint = "use all, attention, mlp, module names (comma-separated) or a regex"
    if spec in KEYWORDS:
        chosen = [n for n in layers if (p := block_path(n)) is not None
                  and (spec == "all" or layer_role(p) == spec)]
    elif _REGEX_CHARS & set(spec):
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise MethodError(f"{key}={spec!r} is not a valid regex ({exc}); "
                              f"{hint}") from exc
        chosen = [n for n in layers if pattern.search(n)]
    else:
        chosen = []
        for item in (s.strip() for s in spec.split(",") if s.strip()):
            hits = [n for n in layers if n == item or n.endswith("." + item)]
            if not hits:
                raise MethodError(f"{key}: {item!r} matches no linear layer of "
                                f"{model.config.model_type}; {_available(layers)}; {hint}")
            chosen += [h for h in hits if h not in chosen]
    if not chosen:
        raise MethodError(f"{key}={spec!r} matches no linear layer of "
                        f"{model.config.model_type}; {_available(layers)}; {hint}")
    return chosen


def features(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of a linear layer: Conv1D's weight is (in, out); nn.Linear, 4-bit too, says."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features
