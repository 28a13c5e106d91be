"""Full fine-tuning: every parameter of the backbone and the head trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from methods import peft_format
from methods.base import MethodError

# Chosen on rotten_tomatoes validation: 5e-5 for 2 epochs is the usual BERT-family setting and
# reached 0.85 validation accuracy; 1e-4 was no better and 2e-5 needed a third epoch.
PRESET = {"lr": 5e-5, "epochs": 2}


@dataclass
class Config:
    """Full fine-tuning has no options of its own."""


def apply(model: nn.Module, cfg: Config) -> dict:
    """Mark every parameter trainable."""
    for p in model.parameters():
        p.requires_grad_(True)
    return {"trains": "every parameter (backbone and head)"}


def save(model: nn.Module, out_dir: str | Path) -> dict[str, str]:
    """Harness hook: the model as transformers saves it, in `out_dir` itself (with
    pooling=native the whole `AutoModelForSequenceClassification`; else the `AutoModel`
    backbone and the shared head's `head.safetensors`); paths inside `out_dir`."""
    out = Path(out_dir)
    peft_format.save_transformers(model, out)
    formats = {"backbone": "."}
    if not peft_format.is_native(model):
        formats["head"] = peft_format.HEAD_FILE
    return formats


def load(model: nn.Module, in_dir: str | Path) -> None:
    """Harness hook: the shared head `save` wrote (the backbone, and a native head, were loaded
    from the folder itself)."""
    from safetensors.torch import load_file

    path = Path(in_dir) / peft_format.HEAD_FILE
    if peft_format.is_native(model):
        return
    head = load_file(str(path))
    if set(head) != {n for n, _ in model.classifier.named_parameters()}:
        raise MethodError(f"{path}: holds {sorted(head)}, not this model's head weight and bias")
    with torch.no_grad():
        for name, p in model.classifier.named_parameters():
            p.copy_(head[name])
