"""DoRA: the magnitude/direction formula by hand, merge, and PEFT (a test-only oracle) giving the
same logits and gradients from the same trained tensors on every tiny architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import eval_logits as _logits
from helpers import load_peft_folder
from torch import nn
from transformers.pytorch_utils import Conv1D

from experiments.harness.config import UserError, resolve
from experiments.inputs.backbones import TINY_ARCHS
from methods import dora, lora
from methods.model import param_split


def _randomize(model: nn.Module, seed: int = 1) -> None:
    """Trained-looking DoRA tensors: B non-zero, A larger, magnitudes away from ||W||_c."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen))
            layer.lora_A.weight.mul_(3.0)
            layer.magnitude.mul_(1 + 0.5 * torch.rand(layer.magnitude.shape, generator=gen))


def _peft_twin(tiny, ours: nn.Module, arch: str, cfg: dora.Config) -> nn.Module:
    """PEFT's DoRA on a fresh copy of the same backbone, loaded with our tensors."""
    from peft import LoraConfig, get_peft_model

    ref, _, _ = tiny(arch)
    names = sorted(lora.lora_layers(ours))
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=names, modules_to_save=["classifier"], use_dora=True,
                        use_rslora=cfg.scaling == "rslora", fan_in_fan_out=arch == "tiny-gpt2")
    peft_model = get_peft_model(ref, config)
    with torch.no_grad():
        for name in names:
            theirs = peft_model.base_model.model.get_submodule(name)
            mine = ours.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(mine.lora_A.weight)
            theirs.lora_B["default"].weight.copy_(mine.lora_B.weight)
            theirs.lora_magnitude_vector["default"].weight.copy_(mine.magnitude)
        head = peft_model.base_model.model.classifier.modules_to_save["default"]
        head.load_state_dict(ours.classifier.state_dict())
    return peft_model


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_same_tensors_give_peft_logits(tiny, make_batch, arch: str) -> None:
    """Our DoRA with trained tensors gives PEFT's logits (fp32, atol 1e-5) and trains as many
    parameters; the magnitude matters (scaling it changes the logits)."""
    ours, tok, _ = tiny(arch)
    batch = make_batch(tok)
    cfg = dora.Config(rank=4, alpha=8.0)
    dora.apply(ours, cfg)
    _randomize(ours)
    peft_model = _peft_twin(tiny, ours, arch, cfg)
    assert _trainable(peft_model) == _trainable(ours) == param_split(ours)["trainable"]
    mine = _logits(ours, batch)
    assert torch.allclose(_logits(peft_model, batch), mine, atol=1e-5)
    with torch.no_grad():
        for layer in lora.lora_layers(ours).values():
            layer.magnitude.mul_(2.0)
    assert not torch.allclose(_logits(ours, batch), mine, atol=1e-3)


@pytest.mark.parametrize(("arch", "options"), [
    ("tiny-bert", {"scaling": "rslora"}),
    ("tiny-gpt2", {"dropout": 0.2}),
    ("tiny-llama", {"dropout": 0.2, "scaling": "rslora"}),
])
def test_training_forward_and_gradients_match_peft(tiny, make_batch, arch: str,
                                                   options: dict) -> None:
    """In train mode (dropout on, the same RNG draws) the loss and every trained gradient match
    PEFT's: the detached norm and the dropout form are PEFT's."""
    ours, tok, _ = tiny(arch)
    batch = make_batch(tok)
    cfg = dora.Config(rank=4, alpha=8.0, **options)
    dora.apply(ours, cfg)
    _randomize(ours)
    peft_model = _peft_twin(tiny, ours, arch, cfg)
    losses = []
    for model in (ours, peft_model):
        model.train()
        torch.manual_seed(7)
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    for name, mine in lora.lora_layers(ours).items():
        theirs = peft_model.base_model.model.get_submodule(name)
        pairs = [(mine.lora_A.weight, theirs.lora_A["default"].weight),
                 (mine.lora_B.weight, theirs.lora_B["default"].weight),
                 (mine.magnitude, theirs.lora_magnitude_vector["default"].weight)]
        for a, b in pairs:
            assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("base", [nn.Linear(6, 4), Conv1D(4, 6)])
def test_formula_by_hand(base: nn.Module) -> None:
    """y = m * (W + s B A) x / ||W + s B A||_c + b, the norm per output over the inputs."""
    torch.manual_seed(0)
    layer = dora.DoRALinear(base, rank=2, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.magnitude.uniform_(0.5, 2.0)
    w = base.weight.T if isinstance(base, Conv1D) else base.weight  # (out, in)
    updated = w + 3.0 * layer.lora_B.weight @ layer.lora_A.weight
    expected_weight = layer.magnitude[:, None] * updated / updated.norm(p=2, dim=1, keepdim=True)
    x = torch.randn(5, 6)
    assert torch.allclose(layer(x), x @ expected_weight.T + base.bias, atol=1e-5)
    start = dora.DoRALinear(type(base)(*((6, 4) if isinstance(base, nn.Linear) else (4, 6))),
                            rank=2, alpha=6.0)
    assert torch.allclose(start.magnitude, start.out_in_weight().norm(p=2, dim=1))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_init_is_the_base_model_and_merge_folds_exactly(tiny, make_batch, arch: str) -> None:
    """At init the logits are the base model's; merged logits equal unmerged ones; unmerge
    restores W."""
    model, tok, _ = tiny(arch)
    batch = make_batch(tok)
    base = _logits(model, batch)
    dora.apply(model, dora.Config(rank=4))
    assert torch.allclose(_logits(model, batch), base, atol=1e-6)
    _randomize(model)
    weights = {n: m.weight.detach().clone() for n, m in lora.lora_layers(model).items()}
    unmerged = _logits(model, batch)
    assert dora.merge(model) == len(weights)
    assert all(m.merged for m in lora.lora_layers(model).values())
    assert torch.allclose(_logits(model, batch), unmerged, atol=1e-5)
    dora.unmerge(model)
    for n, m in lora.lora_layers(model).items():
        assert torch.allclose(m.weight, weights[n], atol=1e-5)
    assert torch.allclose(_logits(model, batch), unmerged, atol=1e-5)


def test_merged_weight_is_the_decomposed_weight() -> None:
    """merge() writes exactly m * (W + s B A) / ||W + s B A||_c into W."""
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = dora.DoRALinear(base, rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.magnitude.uniform_(0.5, 2.0)
        updated = base.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight
        expected = layer.magnitude[:, None] * updated / updated.norm(dim=1, keepdim=True)
    layer.merge()
    assert torch.allclose(layer.weight, expected, atol=1e-6)


def test_counts_and_info(tiny, lora_table) -> None:
    """DoRA trains LoRA's r * (in + out) plus one magnitude per output of each layer."""
    model, _, _ = tiny("tiny-bert")
    info = dora.apply(model, dora.Config(rank=2))
    outs = 2 * sum(n_out for _, _, n_out in lora_table["table"]["tiny-bert"].values())
    assert info["magnitude_params"] == outs
    assert info["adapter_params"] == lora_table["count"]("tiny-bert", 2) + outs
    assert param_split(model)["adapter"] == info["adapter_params"]
    assert info["trains"].startswith("DoRA adapters on 12 layers")


def test_options_are_dora_options() -> None:
    """DoRA's options are LoRA's under `dora.`; a bad one names `dora.`, not `lora.`."""
    cfg = resolve(["method=dora", "dora.rank=4", "dora.scaling=rslora"])
    assert (cfg.method_cfg.rank, cfg.method_cfg.scaling, cfg.lr) == (4, "rslora",
                                                                     dora.PRESET["lr"])
    with pytest.raises(UserError, match=r"dora\.rank=0 must be >= 1"):
        resolve(["method=dora", "dora.rank=0"])
    with pytest.raises(UserError, match=r"dora\.targets"):
        resolve(["method=dora", "dora.targets= "])


def test_peft_export_loads_in_peft(tiny, make_batch, tmp_path: Path) -> None:
    """`export_peft` of a DoRA model writes use_dora and the magnitudes; PEFT loads it."""
    import json

    ours, tok, _ = tiny("tiny-roberta")
    batch = make_batch(tok)
    dora.apply(ours, dora.Config(rank=4, alpha=8.0))
    _randomize(ours)
    out = dora.export_peft(ours, tmp_path / "peft")
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    loaded = load_peft_folder(tiny("tiny-roberta")[0], out)
    assert torch.allclose(_logits(loaded, batch), _logits(ours, batch), atol=1e-5)
