"""Prefix tuning: against three oracles (the model run on the prefix tokens themselves, a hidden
prefix, and one layer's attention written out from its weights), plus pooling over real tokens,
the reparametrising MLP and the options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import eval_logits as _logits
from torch import nn

from experiments.harness.config import UserError, resolve
from experiments.inputs.backbones import TINY_ARCHS
from methods import prefix
from methods.model import param_split, pool

P = 4  # prefix length in these tests
CAUSAL = ("tiny-gpt2", "tiny-llama")


def _randomize(model: nn.Module, seed: int = 1) -> None:
    """A trained-looking prefix, far from the init (large, so a misplaced prefix shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.prefix.weight.copy_(3 * torch.randn(model.prefix.weight.shape, generator=gen))


def _cache_of(output: object) -> object:
    """The key/value cache a forward returned (named `cache` in transformers >= 5.2x)."""
    return next(v for k, v in output.items() if k in ("cache", "past_key_values"))


@pytest.mark.parametrize("arch", CAUSAL)
def test_prefix_of_real_tokens_equals_prepending_them(tiny, make_batch, arch: str) -> None:
    """Oracle 1: on a causal model, a prefix set to the keys and values that P real tokens produce
    gives the logits of the model run on [those tokens; input] (the input's positions starting
    at 0 in both, `last` pooling: the same last real token)."""
    model, tok, _ = tiny(arch, pooling="last")
    batch = make_batch(tok)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows, length = ids.shape
    prefix_ids = torch.tensor([[2023, 3185, 2001, 6429]])  # "this movie was amazing"
    model.eval()
    with torch.no_grad():
        cache = _cache_of(model.backbone(input_ids=prefix_ids, use_cache=True))
        keys = [layer.keys[0] for layer in cache.layers]  # (kv_heads, P, head_dim) per layer
        values = [layer.values[0] for layer in cache.layers]
        positions = torch.cat([torch.arange(P), torch.arange(length)]).expand(rows, -1)
        joined_mask = torch.cat([torch.ones(rows, P, dtype=mask.dtype), mask], dim=1)
        hidden = model.backbone(input_ids=torch.cat([prefix_ids.expand(rows, -1), ids], dim=1),
                                attention_mask=joined_mask, position_ids=positions,
                                use_cache=False).last_hidden_state
        want = model.classifier(pool(hidden, joined_mask, "last"))
    prefix.apply(model, prefix.Config(prefix_length=P))
    with torch.no_grad():
        model.prefix.weight.copy_(torch.stack([torch.stack(kv) for kv in zip(keys, values,
                                                                              strict=True)]))
    got = _logits(model, batch)
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    with torch.no_grad():
        model.prefix.weight[:, :, :, 0].mul_(-1.0)  # one prefix position's keys/values wrong
    assert not torch.allclose(_logits(model, batch), want, atol=1e-3)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_hidden_prefix_leaves_the_base_model(tiny, make_batch, arch: str) -> None:
    """Oracle 2: a (large, random) prefix that the mask hides gives the base model's logits;
    visible, it changes them."""
    model, tok, _ = tiny(arch)
    batch = make_batch(tok)
    base = _logits(model, batch)
    prefix.apply(model, prefix.Config(prefix_length=P))
    _randomize(model)
    assert not torch.allclose(_logits(model, batch), base, atol=1e-3)
    model.prefix.mask.fill_(False)
    assert torch.allclose(_logits(model, batch), base, atol=1e-6)
    model.prefix.mask[1] = True  # one visible position is enough to change them again
    assert not torch.allclose(_logits(model, batch), base, atol=1e-3)


def _attention_reference(arch: str, model: nn.Module, hidden: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Layer 0's attention output over [prefix; tokens], from its weights:
    softmax(Q K^T / sqrt(d) + mask) V, then the output projection where the module has it."""
    bb = model.backbone
    batch, length, _ = hidden.shape
    out_proj = None
    if arch in ("tiny-bert", "tiny-roberta"):
        m = bb.encoder.layer[0].attention.self
        q, k, v = (F.linear(hidden, x.weight, x.bias) for x in (m.query, m.key, m.value))
        heads = kv_heads = m.num_attention_heads
    elif arch == "tiny-distilbert":
        m = bb.transformer.layer[0].attention
        q, k, v = (F.linear(hidden, x.weight, x.bias) for x in (m.q_lin, m.k_lin, m.v_lin))
        heads = kv_heads = m.n_heads
        out_proj = m.out_lin
    elif arch == "tiny-gpt2":
        m = bb.h[0].attn
        q, k, v = (hidden @ m.c_attn.weight + m.c_attn.bias).split(m.embed_dim, dim=2)
        heads = kv_heads = m.num_heads
        out_proj = m.c_proj
    else:  # LLaMA: no biases, rotary positions on q and k, 2 key/value heads shared by 4
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        m = bb.layers[0].self_attn
        q, k, v = (F.linear(hidden, x.weight) for x in (m.q_proj, m.k_proj, m.v_proj))
        heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
        out_proj = m.o_proj
    d = q.shape[-1] // heads

    def split(x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(batch, length, n, d).transpose(1, 2)

    q, k, v = split(q, heads), split(k, kv_heads), split(v, kv_heads)
    if arch == "tiny-llama":
        cos, sin = bb.rotary_emb(hidden, torch.arange(length).unsqueeze(0))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    pk, pv = (x.unsqueeze(0).expand(batch, -1, -1, -1) for x in model.prefix.weight[0])
    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    k, v = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))
    allowed = mask.bool()[:, None, None, :].expand(batch, 1, length, length)
    if arch in CAUSAL:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    allowed = torch.cat([torch.ones(batch, 1, length, P, dtype=torch.bool), allowed], dim=-1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, heads * d)
    if out_proj is not None:
        out = out @ out_proj.weight + out_proj.bias if arch == "tiny-gpt2" else out_proj(out)
    return out


_ATTENTION_MODULE = {
    "tiny-bert": lambda bb: bb.encoder.layer[0].attention.self,
    "tiny-roberta": lambda bb: bb.encoder.layer[0].attention.self,
    "tiny-distilbert": lambda bb: bb.transformer.layer[0].attention,
    "tiny-gpt2": lambda bb: bb.h[0].attn,
    "tiny-llama": lambda bb: bb.layers[0].self_attn,
}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_one_layer_matches_attention_written_from_its_weights(tiny, make_batch,
                                                              arch: str) -> None:
    """Oracle 3: layer 0's attention output (captured in the model's own forward) equals
    softmax(Q [Pk; K]^T / sqrt(d) + mask) [Pv; V] computed by hand from the layer's weights,
    with the prefix columns visible to every query and padding (and the future) masked."""
    model, tok, _ = tiny(arch)
    batch = make_batch(tok)
    prefix.apply(model, prefix.Config(prefix_length=P))
    _randomize(model)
    seen: dict[str, torch.Tensor] = {}

    def before(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["in"] = args[0] if args else kwargs["hidden_states"]

    def after(_m: nn.Module, _args: tuple, output: tuple) -> None:
        seen["out"] = output[0]

    module = _ATTENTION_MODULE[arch](model.backbone)
    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after)
    _logits(model, batch)
    with torch.no_grad():
        want = _attention_reference(arch, model, seen["in"], batch["attention_mask"])
    assert seen["out"].shape == want.shape
    assert torch.allclose(seen["out"], want, atol=1e-5)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_pooling_sees_real_tokens_and_padding_changes_nothing(tiny, make_batch,
                                                              arch: str) -> None:
    """Hidden states keep the input's length (prefixes are keys/values only), and a row's
    logits are the same alone as padded in a batch."""
    model, tok, _ = tiny(arch)
    batch = make_batch(tok)
    prefix.apply(model, prefix.Config(prefix_length=P))
    _randomize(model)
    model.eval()
    with torch.no_grad():
        hidden = model.backbone(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape[1] == batch["input_ids"].shape[1]
    both = _logits(model, batch)
    alone = _logits(model, make_batch(tok, ["a good film"]))
    assert torch.allclose(both[0], alone[0], atol=1e-5)


def test_counts_and_training(tiny, make_batch) -> None:
    """Direct prefixes: layers * 2 * kv_heads * P * head_dim parameters (LLaMA: 2 kv heads)."""
    model, tok, _ = tiny("tiny-llama")
    info = prefix.apply(model, prefix.Config(prefix_length=P))
    assert model.prefix.weight.shape == (2, 2, 2, P, 16)
    assert info["prefix_params"] == param_split(model)["adapter"] == 2 * 2 * 2 * P * 16
    assert info["attention"] == "sdpa with prefixes (was sdpa)"
    model.train()
    model(**make_batch(tok)).loss.backward()
    assert model.prefix.weight.grad.abs().sum() > 0


def test_projection_mlp(tiny, make_batch) -> None:
    """projection=true: an embedding and an MLP make every layer's prefix, computed once per
    forward pass; its parameters train."""
    model, tok, _ = tiny("tiny-bert")
    info = prefix.apply(model, prefix.Config(prefix_length=P, projection=True,
                                             projection_hidden=16))
    width = 2 * 2 * 32  # layers * (k, v) * hidden
    assert info["prefix_params"] == P * 32 + (32 * 16 + 16) + (16 * width + width)
    assert model.prefix().shape == (2, 2, 4, P, 8)
    calls = []
    model.prefix.mlp.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    model(**make_batch(tok)).loss.backward()
    assert len(calls) == 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prefix.parameters())


def test_inits_and_options(tiny) -> None:
    """vocab and random inits give prefixes of the same scale; bad options are one line."""
    stds = {}
    for init in prefix.INITS:
        model, _, _ = tiny("tiny-gpt2")
        prefix.apply(model, prefix.Config(prefix_length=P, init=init))
        stds[init] = model.prefix.weight.std().item()
    assert 0.5 < stds["random"] / stds["vocab"] < 2
    with pytest.raises(UserError, match=r"prefix.prefix_length=0 must be >= 1"):
        resolve(["method=prefix", "prefix.prefix_length=0"])
    with pytest.raises(UserError, match=r"prefix.init='zeros' is not one of: vocab, random"):
        resolve(["method=prefix", "prefix.init=zeros"])
