"""The shared model every method modifies: a backbone, pooling over real tokens, one linear head.

`Classifier` wraps a transformers backbone (`AutoModel`), pools its last hidden state over real
tokens, and applies dropout and one linear `classifier`. One head for every architecture and
method keeps a comparison fair: the native sequence-classification heads differ (BERT's randomly
initialised tanh pooler, GPT-2's pad-id last-token lookup), and the embedded MiniLM was trained
with mean pooling. Loading a backbone (hub, local folder, tiny config) is the harness's job
(`experiments/inputs/backbones.py`); this module only needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ClassifierOutput:
    """What a forward pass returns: loss (when labels were given) and logits."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class Classifier(nn.Module):
    """A transformer backbone, a pooling over real tokens, dropout and a linear head."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)
        # Token types only mean something to BERT-like models; GPT-2 would add them as tokens.
        self.uses_token_types = getattr(backbone.config, "type_vocab_size", 0) > 1
        # Set by a method whose backbone is frozen and should run deterministically (head).
        self.backbone_eval = False
        # Leading positions a method puts before the input tokens (a soft prompt's virtual
        # tokens). The pooling skips them, so every method's head reads the same real tokens
        # (with pooling=cls, the real [CLS]) and a comparison differs only in what trains.
        self.virtual_tokens = 0
        self.base_param_names = {n for n, _ in self.named_parameters()}

    @property
    def config(self) -> Any:
        """The backbone's transformers config."""
        return self.backbone.config

    def get_input_embeddings(self) -> nn.Module:
        """The input token embedding module of the backbone."""
        return self.backbone.get_input_embeddings()

    def train(self, mode: bool = True) -> Classifier:
        """Train mode, except a frozen backbone that a method asked to keep in eval mode."""
        super().train(mode)
        if self.backbone_eval:
            self.backbone.eval()
        return self

    def encode(self, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled sequence features (batch, hidden) from the backbone."""
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if self.uses_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        if self.virtual_tokens:
            v = self.virtual_tokens
            hidden = hidden[:, v:]
            attention_mask = None if attention_mask is None else attention_mask[:, v:]
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                features: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        """Logits (and the cross-entropy loss when labels are given); `features` skips the
        backbone, for methods that cache them."""
        if features is None:
            features = self.encode(input_ids, attention_mask, token_type_ids, inputs_embeds)
        logits = self.classifier(self.dropout(features))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ClassifierOutput(loss=loss, logits=logits)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """Mean over real tokens, the first token, or the last real token (right padding)."""
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = mask.long().cumsum(dim=1).argmax(dim=1)  # index of the last 1 in each row
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)



def param_split(model: Classifier) -> dict[str, int]:
    """Parameter counts: total (base plus what a method added), trainable, and the trainable
    split into head / embedding / adapter (modules a method added) / backbone (the rest)."""
    emb = model.get_input_embeddings()
    emb_ids = {id(p) for p in emb.parameters()}
    pos = position_embeddings(model)
    if pos is not None:
        emb_ids |= {id(p) for p in pos.parameters()}
    head_ids = {id(p) for p in model.classifier.parameters()}
    split = {"total": 0, "trainable": 0, "head": 0, "embedding": 0, "adapter": 0, "backbone": 0}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied weights count once
            continue
        seen.add(id(p))
        n = p.numel()
        is_adapter = name not in model.base_param_names
        split["total"] += n
        if not p.requires_grad:
            continue
        split["trainable"] += n
        if id(p) in head_ids:
            split["head"] += n
        elif is_adapter:
            split["adapter"] += n
        elif id(p) in emb_ids:
            split["embedding"] += n
        else:
            split["backbone"] += n
    return split


def position_embeddings(model: Classifier) -> nn.Module | None:
    """The learned absolute position embedding module, where the architecture has one."""
    for name, module in model.backbone.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("position_embeddings", "wpe") and isinstance(module, nn.Embedding):
            return module
    return None
