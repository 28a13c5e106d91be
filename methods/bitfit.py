"""BitFit (Ben Zaken et al. 2022): only the backbone's bias terms train, plus the head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import MethodError

# Biases are few and start where pretraining left them: a step between LoRA's and a probe's.
# Checked on a rotten_tomatoes subsample, see README "Presets".
PRESET = {"lr": 1e-3, "epochs": 2}


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
