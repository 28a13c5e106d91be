"""Prefix tuning (Li & Liang 2021) / P-tuning v2 (Liu et al. 2022): every attention layer
attends to `prefix_length` trained keys and values before the sequence's own.

The prefixes are keys and values only: the hidden states keep the input's length, the position
ids of the real tokens do not change, and the pooling sees real tokens only. Each layer's
attention runs over [prefix; tokens] with the model's own mask (padding, causality) extended by
the prefix columns, which every query may see (`PrefixEncoder.mask` can hide positions; the tests
use it). With `prefix.projection=true` the prefixes come from a reparametrising MLP over a
trained embedding (Li & Liang's stabiliser), `Linear(hidden, projection_hidden) -> tanh ->
Linear(.., layers * 2 * kv_size)`, as PEFT's `PrefixEncoder`; P-tuning v2 found it unnecessary
for classification, so it is off by default.

How, without touching the model's code: transformers routes every attention computation through
a registered attention function (`AttentionInterface`, chosen by `config._attn_implementation`).
`apply` registers one, `tunebench_prefix`, that concatenates the layer's prefix to the key and
value states the layer computed (after rotary embeddings and any cache, so LLaMA's keys are used
as stored) and the prefix columns to the mask, then calls transformers' own SDPA attention. It
works for BERT, RoBERTa, DistilBERT, GPT-2 and LLaMA alike, where PEFT's PrefixTuningConfig
refuses all of these as classifiers ("Model does not support past key values which are required
for prefix tuning", peft 0.21.2, transformers 5.24): encoders have no key/value cache to fill.
The attention layers are found by a probe forward that records which modules call the function,
in call order; the same probe runs `prefix_length` random vocabulary tokens through the frozen
model, whose keys and values initialise the prefixes (`init=vocab`), as Li & Liang found real
activations a better start than random ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import MethodError
from methods.model import param_split

# Prefix tuning needs a large step (P-tuning v2 used 5e-3..1e-2 on GLUE). Chosen on a
# rotten_tomatoes subsample (1 epoch): validation 0.644 at 5e-3, 0.718 at 1e-2, 0.732 at 3e-2;
# 1e-2 is as good within noise and the safer step for 2 epochs.
# No decay: it would pull the keys and values towards 0, away from the activations they start as.
PRESET = {"lr": 1e-2, "epochs": 2, "weight_decay": 0.0}

ATTENTION = "tunebench_prefix"  # the registered attention implementation's name
INITS = ("vocab", "random")
_probe: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] | None = None  # set during a probe


@dataclass
class Config:
    """Options of the prefix-tuning method."""

    prefix_length: int = 20  # trained key/value positions before every layer's own
    projection: bool = False  # produce the prefixes with a reparametrising MLP (Li & Liang)
    projection_hidden: int = 512  # the MLP's hidden width, with projection=true
    init: str = "vocab"  # vocab: the keys/values of random tokens | random: normal, same scale

    def validate(self) -> None:
        """Reject option values that can never work."""
        if self.prefix_length <= 0:
            raise MethodError(f"prefix.prefix_length={self.prefix_length} must be >= 1")
        if self.projection_hidden <= 0:
            raise MethodError(f"prefix.projection_hidden={self.projection_hidden} must be >= 1")
        if self.init not in INITS:
            raise MethodError(f"prefix.init={self.init!r} is not one of: {', '.join(INITS)}")


class PrefixEncoder(nn.Module):
    """The trained prefixes: `forward()` gives every layer's keys and values as one tensor
    (layers, 2, kv_heads, length, head_dim)."""

    def __init__(self, init: torch.Tensor, projection_hidden: int = 0,
                 embedding: torch.Tensor | None = None) -> None:
        super().__init__()
        self.shape = tuple(init.shape)  # (layers, 2, kv_heads, length, head_dim)
        length = self.shape[3]
        if projection_hidden and embedding is not None:
            self.embedding = nn.Parameter(embedding.detach().clone())  # (length, hidden)
            width = init[:, :, :, 0].numel()  # layers * 2 * kv_heads * head_dim
            self.mlp = nn.Sequential(nn.Linear(embedding.shape[1], projection_hidden), nn.Tanh(),
                                     nn.Linear(projection_hidden, width))
            self.mlp.to(device=embedding.device, dtype=embedding.dtype)
        else:
            self.weight = nn.Parameter(init.detach().clone())
        # Which prefix positions attention may see (all, unless a test or a caller hides some).
        self.register_buffer("mask", torch.ones(length, dtype=torch.bool, device=init.device),
                             persistent=False)
        self._current: torch.Tensor | None = None  # this forward pass's prefixes

    def forward(self) -> torch.Tensor:
        """All layers' prefix keys and values: (layers, 2, kv_heads, length, head_dim)."""
        if not hasattr(self, "mlp"):
            return self.weight
        layers, two, heads, length, dim = self.shape
        flat = self.mlp(self.embedding)  # (length, layers * 2 * heads * dim)
        return flat.view(length, layers, two, heads, dim).permute(1, 2, 3, 0, 4)

    def current(self) -> torch.Tensor:
        """The prefixes of the running forward pass, computed once per pass (the MLP's output is
        shared by every layer)."""
        if self._current is None:
            self._current = self()
        return self._current

    def reset(self, *_: Any) -> None:
        """Forget the last pass's prefixes (a hook before and after each backbone forward)."""
        self._current = None


def extend_mask(mask: torch.Tensor | None, visible: torch.Tensor, q_len: int, kv_len: int,
                causal: bool) -> torch.Tensor:
    """The attention mask over [prefix; keys]: the model's mask (or, when it passed none, the
    full or causal pattern it stood for) with the prefix columns in front."""
    if mask is None:
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=visible.device)
        if causal and q_len > 1:
            mask = mask.tril(diagonal=kv_len - q_len)  # bottom-right aligned, as with a cache
        mask = mask.view(1, 1, q_len, kv_len)
    front = visible.to(mask.device).view(*([1] * (mask.dim() - 1)), -1)
    front = front.expand(*mask.shape[:-1], -1)
    if mask.dtype != torch.bool:  # an additive float mask: 0 where visible, the minimum where not
        zero = torch.zeros((), dtype=mask.dtype, device=mask.device)
        front = torch.where(front, zero, torch.finfo(mask.dtype).min)
    return torch.cat([front, mask], dim=-1)


def prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The registered attention function: the layer's prefix before its keys and values, the
    prefix columns before its mask, then transformers' SDPA attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _probe is not None:
        _probe.append((module, key.detach(), value.detach()))
    link = getattr(module, "_prefix_link", None)
    if link is not None:
        encoder, layer = link
        pk, pv = encoder.current()[layer].to(key.dtype)  # (kv_heads, length, head_dim) each
        batch = key.shape[0]
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        attention_mask = extend_mask(attention_mask, encoder.mask, query.shape[2], key.shape[2],
                                     causal)
        key = torch.cat([pk.unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.unsqueeze(0).expand(batch, -1, -1, -1), value], dim=2)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    """Make `tunebench_prefix` a known attention implementation, with SDPA's mask format."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def _set_attention(backbone: nn.Module, name: str) -> str:
    """Switch the backbone's attention implementation; returns the one it had."""
    before = backbone.config._attn_implementation
    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation(name)
    else:  # older transformers: the config attribute is the switch
        backbone.config._attn_implementation = name
    return before


def probe(model: nn.Module, input_ids: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor,
                                                                 torch.Tensor]]:
    """(attention module, keys, values) of every attention call of one frozen forward, in order."""
    global _probe
    was_training = model.training
    model.eval()
    _probe = []
    try:
        with torch.no_grad():
            model.backbone(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        return _probe
    finally:
        _probe = None
        model.train(was_training)


def _vocab_ids(model: nn.Module, length: int) -> torch.Tensor:
    """`length` random token ids of the vocabulary (pad excluded), from the global RNG."""
    table = model.get_input_embeddings().weight
    pad = getattr(model.config, "pad_token_id", None)
    ids = torch.arange(table.shape[0])
    ids = ids[ids != pad] if pad is not None else ids
    pick = torch.randperm(len(ids))[:length] if length <= len(ids) \
        else torch.randint(len(ids), (length,))
    return ids[pick].to(table.device)


def apply(model: nn.Module, cfg: Config) -> dict:
    """Add the prefixes and the attention that reads them, freeze the backbone, train the
    prefixes and the head."""
    cfg.validate()
    if hasattr(model, "prefix"):
        raise MethodError("the model already has prefixes; apply prefix once, to a fresh model")
    _register()
    before = _set_attention(model.backbone, ATTENTION)
    ids = _vocab_ids(model, cfg.prefix_length).unsqueeze(0)
    calls = probe(model, ids)
    modules = list(dict.fromkeys(m for m, _, _ in calls))
    problem = None
    if not calls or len(modules) != len(calls):
        problem = ("does not compute attention through transformers' AttentionInterface once "
                   "per layer")
    elif len({tuple(k.shape) for _, k, _ in calls}) != 1:
        problem = "has attention layers of different key shapes"
    if problem:
        _set_attention(model.backbone, before)  # a rejected model is left as it was
        raise MethodError(f"prefix: the {model.config.model_type} backbone {problem}; prefix "
                          "tuning here needs one attention call per layer, of one shape")
    # (layers, 2, kv_heads, length, head_dim): the keys and values the vocabulary tokens made.
    init = torch.stack([torch.stack([k[0], v[0]]) for _, k, v in calls])
    if cfg.init == "random":
        std = init.float().std(dim=(2, 3, 4), keepdim=True).to(init.dtype)  # per layer, k / v
        init = torch.randn_like(init) * std
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    embedding = None
    if cfg.projection:
        table = model.get_input_embeddings().weight.detach()
        embedding = table[ids[0]] if cfg.init == "vocab" \
            else torch.randn(cfg.prefix_length, table.shape[1], dtype=table.dtype,
                             device=table.device) * table.float().std()
    model.prefix = PrefixEncoder(init, cfg.projection_hidden if cfg.projection else 0,
                                 embedding)
    for layer, module in enumerate(modules):
        # A plain attribute (a tuple), not a submodule: the encoder is registered once, on the
        # model, and its parameters are counted and saved once.
        module._prefix_link = (model.prefix, layer)
    model.backbone.register_forward_pre_hook(model.prefix.reset)
    model.backbone.register_forward_hook(model.prefix.reset)
    trained = sum(p.numel() for p in model.prefix.parameters())
    assert param_split(model)["adapter"] == trained
    layers, _, heads, length, dim = init.shape
    how = f"an MLP ({cfg.projection_hidden} hidden)" if cfg.projection else "direct"
    return {"trains": f"key/value prefixes ({length} positions, {layers} layers, {how}) + "
                      "classifier head",
            "head_trained": True, "prefix_params": trained, "layers": layers,
            "kv_heads": heads, "head_dim": dim, "projection": cfg.projection, "init": cfg.init,
            "attention": f"sdpa with prefixes (was {before})"}
