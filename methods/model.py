"""The shared model every method modifies: a backbone, pooling over real tokens, one linear head.

`Classifier` wraps a transformers backbone (`AutoModel`), pools its last hidden state over real
tokens, and applies dropout and one linear `classifier`. One head for every architecture and
method keeps a comparison fair: the native sequence-classification heads differ (BERT's randomly
initialised tanh pooler, GPT-2's pad-id last-token lookup), and the embedded MiniLM was trained
with mean pooling. Loading a backbone (hub, local folder, tiny config) is the harness's job
(`experiments/inputs/backbones.py`); this module only needs torch.

`pooling=native` uses the architecture's own sequence-classification head instead
(`NativeHead`: BERT's pooler and classifier, RoBERTa's head, GPT-2's last-token score), so a
run's folder loads with `AutoModelForSequenceClassification` or PEFT's auto class alone.
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
                 dropout: float = 0.1, head: NativeHead | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        # The native head brings its own dropout (the architecture's classifier dropout).
        self.dropout = nn.Dropout(dropout) if head is None else nn.Identity()
        self.classifier: nn.Module = head if head is not None else \
            nn.Linear(backbone.config.hidden_size, num_labels)
        # The token a native head reads ([CLS] or the last real token); else the pooling itself.
        self.pool_how = head.token if head is not None else pooling
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
        return pool(hidden, attention_mask, self.pool_how)

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


class _Features(nn.Module):
    """Stands in for a sequence classifier's base model: returns the features it is given (one
    token per example) as the last hidden state, and the base model's pooler output over them."""

    def __init__(self, pooler: nn.Module | None) -> None:
        super().__init__()
        self.pooler = pooler

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> _Outputs:
        """What a base model returns: index 0 and `last_hidden_state` are the features."""
        pooled = self.pooler(inputs_embeds) if self.pooler is not None else None
        return _Outputs(inputs_embeds, pooled)


class _Outputs:
    """A base model's outputs as heads read them (`[0]`, `[1]`, `.last_hidden_state`); any other
    field (caches, attentions) is None, since no transformer ran."""

    def __init__(self, hidden: torch.Tensor, pooled: torch.Tensor | None) -> None:
        self.last_hidden_state, self.pooler_output = hidden, pooled

    def __getitem__(self, index: Any) -> Any:
        return (self.last_hidden_state, self.pooler_output)[index]

    def __getattr__(self, name: str) -> None:
        return None  # only reached for attributes not set in __init__


class NativeHead(nn.Module):
    """An `AutoModelForSequenceClassification` model without its transformer: the architecture's
    own head code and weights, run on the one token it reads ([CLS], or the last real token for
    decoders, which score every position and keep the last non-padding one)."""

    def __init__(self, seqcls: nn.Module) -> None:
        super().__init__()
        prefix = seqcls.base_model_prefix
        base = getattr(seqcls, prefix)
        # BERT keeps its pooler (dense + tanh over [CLS]) inside the base model; it is part of
        # the head here, under its transformers name `<prefix>.pooler`.
        pooler = getattr(base, "pooler", None)
        if pooler is not None:
            base.pooler = None
        setattr(seqcls, prefix, _Features(pooler))
        self.model = seqcls
        self.prefix = prefix
        # Decoder classifiers (GPT-2, LLaMA, ...) name their head `score` and pick the last
        # non-padding token; encoder heads read the first token.
        self.token = "last" if hasattr(seqcls, "score") else "cls"
        pad = getattr(seqcls.config, "pad_token_id", None)
        self._not_pad = 1 if pad == 0 else 0  # an id the decoder head will not take for padding

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features (batch, hidden)."""
        x = features.unsqueeze(1)  # a one-token sequence: [CLS] and "last token" are both it
        # A dummy non-padding id tells a decoder head which position is last, without the
        # warning it gives for inputs_embeds alone.
        ids = torch.full(x.shape[:2], self._not_pad, dtype=torch.long, device=x.device)
        return self.model(input_ids=ids, inputs_embeds=x).logits

    def module_names(self) -> list[str]:
        """The head's trained modules under their names in the transformers model (what PEFT's
        `modules_to_save` lists)."""
        names = []
        for name, child in self.model.named_children():
            if isinstance(child, _Features):
                if child.pooler is not None:
                    names.append(f"{self.prefix}.pooler")
            elif any(True for _ in child.parameters()):
                names.append(name)
        return names

    def hf_state(self) -> dict[str, torch.Tensor]:
        """The head's tensors under their names in the transformers model."""
        return {n: p for n, p in self.model.named_parameters()}


def native_classifier(seqcls: nn.Module) -> tuple[nn.Module, NativeHead]:
    """(backbone, head) split out of an `AutoModelForSequenceClassification` model."""
    backbone = getattr(seqcls, seqcls.base_model_prefix)
    return backbone, NativeHead(seqcls)


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
        # A 4-bit weight (methods.quantize) packs two elements per byte: count its elements.
        state = getattr(p, "quant_state", None)
        n = state.shape.numel() if state is not None else p.numel()
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
