"""(IA)³: the targets per architecture, the two scalings by hand, merge, and PEFT (a test-only
oracle) giving the same logits from the same trained vectors on every tiny architecture."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import eval_logits as _logits
from torch import nn
from transformers.pytorch_utils import Conv1D

from experiments.harness.config import UserError, resolve
from experiments.inputs.backbones import TINY_ARCHS
from methods import ia3
from methods.base import MethodError
from methods.model import param_split

# Per block: path -> input-scaled (feed-forward)? Written from the architectures, not the code.
_BERT = {"attention.self.key": False, "attention.self.value": False, "output.dense": True}
DEFAULTS = {
    "tiny-bert": _BERT,
    "tiny-roberta": _BERT,
    "tiny-distilbert": {"attention.k_lin": False, "attention.v_lin": False, "ffn.lin2": True},
    "tiny-gpt2": {"attn.c_attn": False, "mlp.c_proj": True},
    "tiny-llama": {"self_attn.k_proj": False, "self_attn.v_proj": False, "mlp.down_proj": True},
}
# Vector sizes per block: out for scaled outputs, in for scaled inputs (tiny configs, 2 blocks).
SIZES = {"tiny-bert": 32 + 32 + 64, "tiny-roberta": 32 + 32 + 64,
         "tiny-distilbert": 32 + 32 + 64, "tiny-gpt2": 96 + 128, "tiny-llama": 32 + 32 + 128}


def _randomize(model: nn.Module, seed: int = 1) -> None:
    """Trained-looking vectors: ones would hide a missing or misplaced scaling."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ia3.ia3_layers(model).values():
            layer.ia3_scale.copy_(0.2 + 1.6 * torch.rand(layer.ia3_scale.shape, generator=gen))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_default_targets(tiny, arch: str) -> None:
    """Keys and values scale their outputs, the MLP down projection its input; counts add up."""
    model, _, _ = tiny(arch)
    info = ia3.apply(model, ia3.Config())
    got = {ia3.block_path(n): m.feedforward for n, m in ia3.ia3_layers(model).items()}
    assert got == DEFAULTS[arch]
    assert info["feedforward_modules"] == [p for p, ff in DEFAULTS[arch].items() if ff]
    assert info["adapter_params"] == param_split(model)["adapter"] == 2 * SIZES[arch]
    for p in ia3.ia3_layers(model).values():
        assert torch.equal(p.ia3_scale, torch.ones_like(p.ia3_scale))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_same_vectors_give_peft_logits(tiny, make_batch, arch: str) -> None:
    """Our (IA)³ with trained vectors gives PEFT's logits (fp32, atol 1e-5) with as many
    trainable parameters (PEFT given our targets and feed-forward layers)."""
    from peft import IA3Config, get_peft_model

    ours, tok, _ = tiny(arch)
    batch = make_batch(tok)
    base = _logits(ours, batch)
    ia3.apply(ours, ia3.Config())
    assert torch.allclose(_logits(ours, batch), base, atol=1e-6)  # ones: the base model
    _randomize(ours)
    layers = ia3.ia3_layers(ours)
    config = IA3Config(target_modules=sorted(layers),
                       feedforward_modules=sorted(n for n, m in layers.items() if m.feedforward),
                       modules_to_save=["classifier"], fan_in_fan_out=arch == "tiny-gpt2")
    peft_model = get_peft_model(tiny(arch)[0], config)
    with torch.no_grad():
        for name, mine in layers.items():
            theirs = peft_model.base_model.model.get_submodule(name).ia3_l["default"]
            theirs.copy_(mine.ia3_scale.view(theirs.shape))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == param_split(ours)["trainable"]
    mine = _logits(ours, batch)
    assert torch.allclose(_logits(peft_model, batch), mine, atol=1e-5)
    assert not torch.allclose(mine, base, atol=1e-3)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-roberta", "tiny-gpt2", "tiny-llama"])
def test_defaults_are_peft_defaults(tiny, arch: str) -> None:
    """PEFT's own default targets are ours; on BERT/RoBERTa its `output.dense` suffix also
    catches attention.output.dense (the documented difference)."""
    from peft import IA3Config, get_peft_model

    model, _, _ = tiny(arch)
    ia3.apply(model, ia3.Config())
    ours = {n.removeprefix("backbone."): m.feedforward for n, m in ia3.ia3_layers(model).items()}
    peft_model = get_peft_model(tiny(arch)[0], IA3Config(fan_in_fan_out=arch == "tiny-gpt2"))
    theirs = {n.removeprefix("base_model.model.backbone."): m.is_feedforward
              for n, m in peft_model.named_modules() if hasattr(m, "ia3_l")}
    extra = {n: True for n in theirs if n.endswith("attention.output.dense")}
    assert bool(extra) == (arch in ("tiny-bert", "tiny-roberta"))
    assert theirs == {**ours, **extra}


@pytest.mark.parametrize("feedforward", [False, True])
@pytest.mark.parametrize("base", [nn.Linear(6, 4), Conv1D(4, 6)])
def test_scaling_by_hand_and_merge(base: nn.Module, feedforward: bool) -> None:
    """l ⊙ (W x + b) or W (l ⊙ x) + b; merge folds l into W (and b) with the same outputs."""
    torch.manual_seed(0)
    w = (base.weight.T if isinstance(base, Conv1D) else base.weight).detach().clone()  # (out, in)
    b = base.bias.detach().clone()
    layer = ia3.IA3Linear(base, feedforward)
    with torch.no_grad():
        layer.ia3_scale.uniform_(0.5, 2.0)
    l_vec = layer.ia3_scale.detach()
    x = torch.randn(3, 5, 6)
    want = (x * l_vec) @ w.T + b if feedforward else (x @ w.T + b) * l_vec
    assert torch.allclose(layer(x), want, atol=1e-6)
    layer.merge()
    assert torch.allclose(layer(x), want, atol=1e-5)
    layer.unmerge()
    now = layer.weight.T if isinstance(base, Conv1D) else layer.weight
    assert torch.allclose(now, w, atol=1e-6) and torch.allclose(layer.bias, b, atol=1e-6)


def test_model_merge_keeps_logits(tiny, make_batch) -> None:
    """Merged logits equal unmerged ones on a whole model."""
    model, tok, _ = tiny("tiny-gpt2")
    batch = make_batch(tok)
    ia3.apply(model, ia3.Config())
    _randomize(model)
    before = _logits(model, batch)
    assert ia3.merge(model) == 4
    assert torch.allclose(_logits(model, batch), before, atol=1e-5)
    ia3.unmerge(model)
    assert torch.allclose(_logits(model, batch), before, atol=1e-5)


def test_targets_by_name_and_errors(tiny) -> None:
    """LoRA's selectors work; a name matching nothing is a one-line MethodError."""
    model, _, _ = tiny("tiny-bert")
    info = ia3.apply(model, ia3.Config(targets="query,intermediate.dense,output.dense"))
    assert info["layers"] == 8 and info["feedforward_modules"] == ["output.dense"]
    other, _, _ = tiny("tiny-bert")
    with pytest.raises(MethodError, match=re.escape("ia3.targets: 'nope' matches no linear")):
        ia3.apply(other, ia3.Config(targets="nope"))
    with pytest.raises(UserError, match="ia3.targets is empty"):
        resolve(["method=ia3", "ia3.targets= "])
