"""A trained `Classifier` as the Hugging Face ecosystem stores it: PEFT adapter folders and
transformers model folders, with module names as in the transformers model.

Names follow the model a folder loads onto. With `pooling=native` that is the architecture's
`AutoModelForSequenceClassification` (`bert.encoder...`, the head as `classifier`, `score`,
`bert.pooler`, ...): the adapter's `task_type` is `SEQ_CLS`, the head is in `modules_to_save`,
and `peft.AutoPeftModelForSequenceClassification.from_pretrained(folder)` loads it. With the
suite's shared head (mean, cls or last pooling) it is `AutoModel` (`encoder...`): `task_type` is
`FEATURE_EXTRACTION` (so PEFT's sequence-classification auto class refuses it rather than putting
a random head on top) and the head is `head.safetensors` (`weight`, `bias`), applied to the
pooled features by the few lines of the folder's model card. The base model's name is
`model.config._name_or_path`, which the harness sets to the name the user gave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.model import NativeHead

PEFT_PREFIX = "base_model.model."  # PEFT's key prefix, with the adapter name left out
HEAD_FILE = "head.safetensors"  # the shared head: `weight` (labels, hidden) and `bias`
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def is_native(model: nn.Module) -> bool:
    """Whether the model uses its architecture's own classification head (pooling=native)."""
    return isinstance(model.classifier, NativeHead)


def hf_name(model: nn.Module, name: str) -> str:
    """A parameter or module name of ours as in the transformers model the folder loads onto."""
    if name == "backbone" or name.startswith("backbone."):
        rest = name.removeprefix("backbone").removeprefix(".")
        return f"{model.classifier.prefix}.{rest}".rstrip(".") if is_native(model) else rest
    if is_native(model) and name.startswith("classifier.model."):
        return name.removeprefix("classifier.model.")
    raise ValueError(f"{name} has no place in the transformers model (the shared head is "
                     f"saved apart, in {HEAD_FILE})")


def task_type(model: nn.Module) -> str:
    """PEFT's task type for the model's folder."""
    return "SEQ_CLS" if is_native(model) else "FEATURE_EXTRACTION"


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file, readable like the run's records (0644: safetensors writes 0600)."""
    from safetensors.torch import save_file

    save_file(_cpu(tensors), str(path), metadata={"format": "pt"})
    path.chmod(0o644)


def save_shared_head(model: nn.Module, out: Path) -> str | None:
    """The shared head's `weight` and `bias` in `out/head.safetensors` (not for native heads)."""
    if is_native(model):
        return None
    save_safetensors(dict(model.classifier.named_parameters()), out / HEAD_FILE)
    return HEAD_FILE


def write_adapter(model: nn.Module, out_dir: str | Path, config: dict[str, Any],
                  tensors: dict[str, torch.Tensor], extra_modules: list[str]) -> Path:
    """An adapter folder: `config` (PEFT's keys for the method) completed with the base model,
    task type and `modules_to_save` (the native head and `extra_modules`, our names), the
    adapter `tensors` (keys of ours, suffix PEFT's) and the saved modules' weights."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {f"{PEFT_PREFIX}{hf_name(model, k)}": v for k, v in tensors.items()}
    modules = {name: model.get_submodule(name) for name in extra_modules}
    saved = [hf_name(model, n) for n in extra_modules]
    if is_native(model):
        head: NativeHead = model.classifier
        saved = head.module_names() + saved
        weights.update({f"{PEFT_PREFIX}{k}": v for k, v in head.hf_state().items()})
    for name, module in modules.items():
        weights.update({f"{PEFT_PREFIX}{hf_name(model, name)}.{k}": v
                        for k, v in module.named_parameters()})
    config = {**config, "task_type": task_type(model), "modules_to_save": saved or None,
              "inference_mode": True, "revision": None,
              "base_model_name_or_path": getattr(model.config, "_name_or_path", "") or None}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / CONFIG_FILE).chmod(0o644)
    save_safetensors(weights, out / WEIGHTS_FILE)
    save_shared_head(model, out)
    return out


def transformers_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer under its transformers name, read from the tensors
    the model holds now (a sharded model whose shards are gathered holds full tensors, while its
    `state_dict()` would return the shards); the shared head is left out."""
    state = dict(model.named_parameters(remove_duplicate=False))
    for prefix, sub in model.named_modules(remove_duplicate=False):
        for name, buf in sub.named_buffers(recurse=False):
            if buf is not None and name not in sub._non_persistent_buffers_set:
                state[f"{prefix}.{name}" if prefix else name] = buf
    keep = {}
    for name, tensor in state.items():
        if name.startswith("backbone.") or (is_native(model) and name.startswith("classifier.")):
            keep[hf_name(model, name)] = tensor
    return _cpu(keep)


def save_transformers(model: nn.Module, out_dir: str | Path) -> Path:
    """The whole model as `save_pretrained` writes it: native, the sequence classifier
    (`AutoModelForSequenceClassification.from_pretrained(out_dir)`); else the backbone
    (`AutoModel`) and the shared head beside it."""
    from transformers.utils import logging

    out = Path(out_dir)
    target = model.classifier.model if is_native(model) else model.backbone
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a bar per shard written would interleave with the run's
    try:
        target.save_pretrained(out, state_dict=transformers_state(model))
    finally:
        if bars:
            logging.enable_progress_bar()
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)
    save_shared_head(model, out)
    return out
