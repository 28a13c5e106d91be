"""BitFit (Ben Zaken et al. 2022): only the backbone's bias terms train, plus the head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import MethodError

# Few parameters, each with little leverage: a probe-sized step. Chosen on a rotten_tomatoes
# subsample (1 epoch): validation 0.596 at 1e-3, 0.718 at 3e-3, 0.750 at 1e-2, 0.576 at 3e-2.
PRESET = {"lr": 1e-2, "epochs": 2}


@dataclass
class Config:
    """BitFit has no options of its own."""


def apply(model: nn.Module, cfg: Config) -> dict:
    """Freeze every weight; train the backbone's biases (linear and LayerNorm) and the head."""
    biases = [p for n, p in model.backbone.named_parameters() if n.endswith("bias")]
    if not biases:
        raise MethodError(f"bitfit: the {model.config.model_type} backbone has no bias terms to "
                          "train; choose another method (e.g. ia3 or lora)")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*biases, *model.classifier.parameters()]:
        p.requires_grad_(True)
    return {"trains": f"{len(biases)} bias vectors + classifier head", "head_trained": True,
            "bias_params": sum(p.numel() for p in biases)}
