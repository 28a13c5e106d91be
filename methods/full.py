"""Full fine-tuning: every parameter of the backbone and the head trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from methods.base import MethodError

# Chosen on rotten_tomatoes validation: 5e-5 for 2 epochs is the usual BERT-family setting and
# reached 0.85 validation accuracy; 1e-4 was no better and 2e-5 needed a third epoch.
PRESET = {"lr": 5e-5, "epochs": 2}

BACKBONE_DIR = "backbone"
HEAD_FILE = "head.safetensors"


@dataclass
class Config:
    """Full fine-tuning has no options of its own."""


def apply(model: nn.Module, cfg: Config) -> dict:
    """Mark every parameter trainable."""
    for p in model.parameters():
        p.requires_grad_(True)
    return {"trains": "every parameter (backbone and head)"}


def save(model: nn.Module, out_dir: str | Path) -> dict[str, str]:
    """Harness hook: the whole backbone as transformers saves it (`save_pretrained`, with the
    tokenizer, so `AutoModel.from_pretrained` loads it) and the head; paths inside `out_dir`."""
    from safetensors.torch import save_file
    from transformers.utils import logging

    out = Path(out_dir)
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a bar per shard written would interleave with the run's
    try:
        model.backbone.save_pretrained(out / BACKBONE_DIR, state_dict=_full_state(model.backbone))
    finally:
        if bars:
            logging.enable_progress_bar()
    tokenizer = getattr(model, "tokenizer", None)  # set by the harness's backbone loader
    if tokenizer is not None:
        tokenizer.save_pretrained(out / BACKBONE_DIR)
    save_file({f"classifier.{n}": p.detach().cpu().clone()
               for n, p in model.classifier.named_parameters()}, str(out / HEAD_FILE))
    return {"backbone": BACKBONE_DIR, "head": HEAD_FILE}


def _full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """What `state_dict()` holds (parameters and persistent buffers), read from the tensors the
    module holds now: a sharded (FSDP) model whose shards are gathered holds full tensors, while
    its `state_dict()` would return (or touch) the shards."""
    state = dict(module.named_parameters(remove_duplicate=False))
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for name, buf in sub.named_buffers(recurse=False):
            if buf is not None and name not in sub._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buf
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load(model: nn.Module, in_dir: str | Path) -> None:
    """Harness hook: the head `save` wrote (the backbone was loaded from its folder)."""
    from safetensors.torch import load_file

    path = Path(in_dir) / HEAD_FILE
    unexpected = model.load_state_dict(load_file(str(path)), strict=False).unexpected_keys
    if unexpected:
        raise MethodError(f"{path}: {unexpected[0]} is not a head tensor of this model")
