"""Soft prompt (prompt tuning): trainable virtual-token embeddings before every input.

`prompt_length` vectors are prepended to the input embeddings; the attention mask gains as many
ones at the front (and token_type_ids as many zeros), so a pooling that reads the mask sees the
extended sequence: `last` still picks the last real token of a right-padded decoder input, and
`mean` averages over prompt and real tokens. The backbone is frozen; the prompt and the head
train. The prompt is added by a forward pre-hook on the `Classifier`, so it applies to every
`model(...)` call (a direct `model.encode(...)` bypasses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import MethodError
from methods.model import param_split, position_embeddings

# Prompt tuning needs a far larger step than fine-tuning (Lester et al. used 0.3 with Adafactor;
# with AdamW 1e-2..1e-1 is usual). Checked on a rotten_tomatoes subsample (train_size=2000
# eval_size=500): validation 0.748 at 3e-2, 0.746 at 1e-1; the smaller step
# is as good and safer. No weight decay: it would pull the prompt away from the embedding scale.
PRESET = {"lr": 3e-2, "epochs": 2, "weight_decay": 0.0}

INITS = ("random", "vocab", "text")
# Classifier.forward's parameters in order, to read positional calls in the hook.
_FORWARD_ARGS = ("input_ids", "attention_mask", "token_type_ids", "inputs_embeds", "features",
                 "labels")


@dataclass
class Config:
    """Options of the soft-prompt method."""

    prompt_length: int = 20  # number of virtual tokens prepended to every input
    init: str = "vocab"  # random (normal, the embeddings' std) | vocab (sampled tokens) | text
    init_text: str = ""  # for init=text: tokenized, repeated or truncated to prompt_length

    def validate(self) -> None:
        """Reject option values that can never work."""
        if self.prompt_length <= 0:
            raise MethodError(f"soft_prompt.prompt_length={self.prompt_length} must be >= 1")
        if self.init not in INITS:
            raise MethodError(f"soft_prompt.init={self.init!r} is not one of: {', '.join(INITS)}")
        if self.init == "text" and not self.init_text.strip():
            raise MethodError("soft_prompt.init=text needs soft_prompt.init_text='some words'")


class SoftPrompt(nn.Module):
    """The trainable prompt: `length` vectors of the backbone's hidden size."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone())

    def forward(self, batch_size: int) -> torch.Tensor:
        """The prompt repeated over the batch: (batch, length, hidden)."""
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)


def initial_prompt(model: nn.Module, cfg: Config) -> torch.Tensor:
    """The prompt's starting value (length, hidden) from the chosen init."""
    table = model.get_input_embeddings().weight.detach()
    length = cfg.prompt_length
    if cfg.init == "random":
        # Scaled like the real token vectors; a unit normal would dwarf them.
        return torch.randn(length, table.shape[1], dtype=table.dtype) * table.float().std()
    if cfg.init == "vocab":
        pad = getattr(model.config, "pad_token_id", None)
        ids = torch.arange(table.shape[0])
        ids = ids[ids != pad] if pad is not None else ids
        pick = torch.randperm(len(ids))[:length] if length <= len(ids) \
            else torch.randint(len(ids), (length,))
        return table[ids[pick]].clone()
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise MethodError("soft_prompt.init=text needs the model's tokenizer (model.tokenizer, set "
                        "by the harness's backbone loader)")
    ids = tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise MethodError(f"soft_prompt.init_text={cfg.init_text!r} tokenizes to nothing")
    ids = (ids * math.ceil(length / len(ids)))[:length]
    return table[torch.tensor(ids)].clone()


def prepend_prompt(model: nn.Module, args: tuple, kwargs: dict[str, Any]
                   ) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: inputs -> [prompt; input embeddings], mask and token types extended."""
    kwargs = {**dict(zip(_FORWARD_ARGS[:len(args)], args, strict=True)), **kwargs}
    if kwargs.get("features") is not None:  # pooled features skip the backbone: nothing to do
        return (), kwargs
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        embeds = model.get_input_embeddings()(kwargs["input_ids"])
    batch, length = embeds.shape[0], model.soft_prompt.weight.shape[0]
    prompt = model.soft_prompt(batch).to(embeds.dtype)
    kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
    kwargs["input_ids"] = None
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, length), mask], dim=1)
    types = kwargs.get("token_type_ids")
    if types is not None:
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, length), types], dim=1)
    return (), kwargs


def apply(model: nn.Module, cfg: Config) -> dict:
    """Add the prompt and its hook, freeze the backbone, train the prompt and the head."""
    cfg.validate()
    if hasattr(model, "soft_prompt"):
        raise MethodError("the model already has a soft prompt; apply soft_prompt once")
    positions = position_embeddings(model)
    if positions is not None and cfg.prompt_length >= positions.num_embeddings:
        raise MethodError(f"soft_prompt.prompt_length={cfg.prompt_length} leaves no room in "
                        f"{positions.num_embeddings} positions; use a shorter prompt")
    init = initial_prompt(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    table = model.get_input_embeddings().weight
    model.soft_prompt = SoftPrompt(init.to(table.device))
    model.register_forward_pre_hook(prepend_prompt, with_kwargs=True)
    model.virtual_tokens = cfg.prompt_length  # pooled over the real tokens only
    assert param_split(model)["adapter"] == init.numel()  # prompt_length * hidden
    return {"trains": f"soft prompt ({cfg.prompt_length} virtual tokens) + classifier head",
            "head_trained": True, "prompt_params": init.numel(), "init": cfg.init}
