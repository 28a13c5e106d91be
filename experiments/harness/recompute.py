"""Activation checkpointing (`activation_checkpointing=true`): recompute instead of keep.

Each transformer block of the backbone keeps only its input for the backward pass and runs its
forward again there to rebuild what it saved, through the backbone's own checkpointing in
transformers (`activation_checkpointing_enable`, `gradient_checkpointing_enable` before 5.x),
non-reentrant (`use_reentrant=False`). The non-reentrant form needs no input that requires a
gradient, so it works for methods that freeze the whole backbone and train only adapters, prompts
or prefixes inside it. The activations held between forward and backward fall to one block's
worth plus the blocks' inputs; each step computes every block's forward twice.

It only applies while the model trains (transformers checks `self.training`): evaluation runs
as before.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from experiments.harness.config import UserError


def enable(model: nn.Module, method: str) -> dict[str, Any]:
    """Turn on the backbone's activation checkpointing; info for the record (a UserError in one
    line where it cannot apply)."""
    if method == "head":
        raise UserError("activation_checkpointing=true does not apply to method=head: its frozen "
                        "backbone runs once, before training, on cached features; use "
                        "activation_checkpointing=false")
    backbone = model.backbone
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise UserError(f"activation_checkpointing=true: transformers has no activation "
                        f"checkpointing for {type(backbone).__name__} "
                        f"({model.config.model_type}); use activation_checkpointing=false")
    turn_on = getattr(backbone, "activation_checkpointing_enable", None)
    kwargs = {"use_reentrant": False}
    with warnings.catch_warnings():  # the old name's deprecation warning, where both exist
        warnings.simplefilter("ignore", FutureWarning)
        if turn_on is not None:
            turn_on(activation_checkpointing_kwargs=kwargs)
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    layers = sum(1 for m in backbone.modules() if getattr(m, "gradient_checkpointing", False))
    if not layers:
        raise UserError(f"activation_checkpointing=true: {type(backbone).__name__} marked no "
                        "block for checkpointing; use activation_checkpointing=false")
    return {"activation_checkpointing": True, "checkpointed_modules": layers}
