"""One place a model is built for a config: the backbone, the method's `apply`, its trained weights.

Training (`experiments.train`), a saved run's reload (`experiments.harness.artifacts.load_model`,
which `make predict` uses) and the benchmarks (`bench.workloads`) all start from `build_model`, so
the sequence backbone -> `apply` -> hooks exists once. The caller seeds first (the head's init
draws from the global RNG), as the run did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from experiments.harness import recompute
from experiments.harness.config import Config, UserError, method_errors
from experiments.inputs.backbones import load_backbone
from methods import METHODS
from methods.base import MethodSpec

TRAINED_FILE = "trained.safetensors"  # the generic save: every trained tensor by name

# An adapter other than the method's own `apply`: (model, cfg) -> (model to train, info).
Adapt = Callable[[nn.Module, Config], tuple[nn.Module, dict[str, Any]]]


@dataclass
class Built:
    """A model ready for a config, with what the run record says about it."""

    model: nn.Module
    tokenizer: Any
    model_info: dict[str, Any]
    method_info: dict[str, Any]
    spec: MethodSpec


def build_model(cfg: Config, num_labels: int, *, source: str | None = None,
                base_weights: Path | None = None, saved: Path | None = None,
                trained_file: str = TRAINED_FILE, adapt: Adapt | None = None,
                device: torch.device | None = None) -> Built:
    """The backbone (`source`, default `cfg.model`; then `base_weights`, a random tiny
    backbone's saved frozen tensors), the method's `apply` (or `adapt`), and for a saved model
    folder `saved` its trained weights (the method's `load` hook, else every trained tensor by
    name from `trained_file`); moved to `device` if given."""
    model, tokenizer, model_info = load_backbone(source or cfg.model, num_labels, cfg.pooling,
                                                 cfg.classifier_dropout)
    if base_weights is not None:
        load_tensors(model, base_weights)
    spec = METHODS[cfg.method]
    if adapt is not None:
        model, method_info = adapt(model, cfg)
    else:
        with method_errors():
            method_info = dict(spec.apply(model, cfg.method_cfg) or {})
    if cfg.activation_checkpointing:  # the backbone recomputes its blocks in the backward
        method_info.update(recompute.enable(model, cfg.method))
    if saved is not None:
        if spec.load is not None:
            with method_errors():
                spec.load(model, saved)
        else:
            load_tensors(model, saved / trained_file, set(trained_tensors(model)))
    if device is not None:
        model.to(device)
    return Built(model, tokenizer, model_info, method_info, spec)


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trained or that a method added, and the head, by name (CPU copies:
    a gathered or tied tensor may share storage, which safetensors refuses)."""
    head = {f"classifier.{n}" for n, _ in model.classifier.named_parameters()}
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()
            if p.requires_grad or n in head or n not in model.base_param_names}


def load_tensors(model: nn.Module, path: Path, expected: set[str] | None = None) -> None:
    """Copy a safetensors file into the model's parameters by name; every name must have a
    place, and every `expected` name must be in the file."""
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    missing = sorted((expected or set()) - set(tensors))
    if unknown or missing:
        what = f"{len(unknown)} tensors with no place in the model (first: {unknown[0]})" \
            if unknown else f"{len(missing)} trained tensors missing (first: {missing[0]})"
        raise UserError(f"{path}: {what}; was it saved by this code for this run's config?")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
