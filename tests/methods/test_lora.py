"""LoRA: target selection per architecture, exact start, alpha/r scaling, merge, save/load, and
agreement with PEFT (a test-only oracle) on the forward pass and on the exported adapter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import eval_logits as _logits
from helpers import load_peft_folder
from torch import nn
from transformers.pytorch_utils import Conv1D

from experiments.harness.config import UserError, resolve
from experiments.inputs.backbones import TINY_ARCHS
from methods import METHODS, lora
from methods.base import MethodError
from methods.model import param_split


def _randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """A trained-looking adapter: B non-zero (at init it is zero and would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen))
            layer.lora_A.weight.mul_(3.0)


@pytest.mark.parametrize("role", ["all", "attention", "mlp"])
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_targets_select_the_tabled_layers(tiny, lora_table, arch: str, role: str) -> None:
    """`all` / `attention` / `mlp` pick exactly the table's rows, with the table's shapes."""
    model, _, _ = tiny(arch)
    info = lora.apply(model, lora.Config(rank=2, targets=role))
    table = lora_table["table"][arch]
    want = {p for p, (r, _, _) in table.items() if role == "all" or r == role}
    assert set(info["target_modules"]) == want
    for name, layer in lora.lora_layers(model).items():
        _, n_in, n_out = table[lora.block_path(name)]
        assert (layer.in_features, layer.out_features) == (n_in, n_out), name
    assert param_split(model)["adapter"] == lora_table["count"](arch, 2, role)
    assert info["adapter_params"] == lora_table["count"](arch, 2, role)


@pytest.mark.parametrize(("arch", "targets", "layers"), [
    ("tiny-bert", "query,value", 4),
    ("tiny-bert", "attention.output.dense", 2),  # a dotted suffix, not BERT's MLP output.dense
    ("tiny-gpt2", "c_proj", 4),  # a leaf name matches both attention and MLP c_proj
    ("tiny-llama", r"layers\.0\.self_attn\.(q|v)_proj", 2),  # a regex
])
def test_targets_by_name_and_regex(tiny, arch: str, targets: str, layers: int) -> None:
    """Names match a full path or its dotted suffix; regex characters switch to re.search."""
    model, _, _ = tiny(arch)
    assert lora.apply(model, lora.Config(rank=2, targets=targets))["layers"] == layers


@pytest.mark.parametrize(("options", "message"), [
    ({"targets": "nonexistent"}, "attention.self.query"),  # lists what exists
    ({"targets": "query,nope"}, "'nope' matches no linear layer"),
    ({"targets": "(unclosed"}, "not a valid regex"),
    ({"targets": "classifier"}, "'classifier' matches no linear layer"),  # the head: never LoRA
    ({"rank": 33}, "exceeds min(in, out)=32"),
    ({"rank": 0}, "must be >= 1"),
    ({"init": "xavier"}, "lora.init"),
    ({"scaling": "sqrt"}, "lora.scaling='sqrt' is not one of: standard, rslora"),
    ({"lr_ratio": 0.0}, "lora.lr_ratio=0.0 must be > 0"),
])
def test_bad_options_are_one_line_user_errors(tiny, options: dict, message: str) -> None:
    """Unusable options raise the method's own MethodError before the model is touched."""
    model, _, _ = tiny("tiny-bert")
    with pytest.raises(MethodError, match=re.escape(message)) as err:
        lora.apply(model, lora.Config(**options))
    assert "\n" not in str(err.value)
    assert not lora.lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())  # untouched


def test_config_validation_through_resolve() -> None:
    """`lora.rank=0` on the command line is rejected by the config, before any model loads."""
    with pytest.raises(UserError, match="lora.rank=0"):
        resolve(["lora.rank=0"])
    with pytest.raises(UserError, match="lora.dropout"):
        resolve(["lora.dropout=1.5"])


def test_defaults_and_registry() -> None:
    """The default run is LoRA r8 alpha16 on all linear layers, at its preset lr."""
    assert list(METHODS) == ["head", "soft_prompt", "ia3", "bitfit", "prefix", "lora", "dora",
                             "embedding", "full"]
    cfg = resolve([])
    assert cfg.method == "lora" and cfg.lr == lora.PRESET["lr"]
    assert (cfg.method_cfg.rank, cfg.method_cfg.alpha, cfg.method_cfg.targets) == (8, 16.0, "all")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_init_gives_the_base_model_exactly(tiny, make_batch, arch: str) -> None:
    """B starts at zero: the adapted model's logits are bit-identical to the base model's."""
    model, tok, _ = tiny(arch)
    batch = make_batch(tok)
    base = _logits(model, batch)
    lora.apply(model, lora.Config(rank=4))
    assert torch.equal(_logits(model, batch), base)


@pytest.mark.parametrize("base", [nn.Linear(5, 3), Conv1D(3, 5)])
def test_alpha_over_rank_multiplies_the_update(base: nn.Module) -> None:
    """y = W x + b + (alpha / r) B A x, with alpha / r = 4 (the lecture's code divides)."""
    torch.manual_seed(0)
    layer = lora.LoRALinear(base, rank=2, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(7, 5)
    w = base.weight.T if isinstance(base, Conv1D) else base.weight  # (out, in) either way
    base_out = x @ w.T + base.bias
    update = x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    out = layer(x)
    assert torch.allclose(out, base_out + 4.0 * update, atol=1e-6)
    assert not torch.allclose(out, base_out + update / 4.0, atol=1e-3)
    delta = 4.0 * layer.lora_B.weight @ layer.lora_A.weight  # (out, in)
    assert torch.allclose(layer.delta_weight(), delta.T if isinstance(base, Conv1D) else delta)


@pytest.mark.parametrize(("scaling", "factor"), [("standard", 8.0 / 4), ("rslora", 8.0 / 2)])
def test_rslora_divides_by_the_root_of_the_rank(scaling: str, factor: float) -> None:
    """scaling=standard multiplies B A by alpha / r, rslora by alpha / sqrt(r) (r = 4)."""
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    layer = lora.LoRALinear(base, rank=4, alpha=8.0, use_rslora=scaling == "rslora")
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(7, 5)
    update = x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert layer.scaling == factor
    assert torch.allclose(layer(x), base(x) + factor * update, atol=1e-6)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_rslora_gives_peft_rslora_logits(tiny, make_batch, tmp_path: Path, arch: str) -> None:
    """rsLoRA with PEFT's A and B gives PEFT's `use_rslora=True` logits, and the export says so."""
    import json

    from peft import LoraConfig, get_peft_model

    ours, tok, _ = tiny(arch)
    batch = make_batch(tok)
    info = lora.apply(ours, lora.Config(rank=4, alpha=8.0, scaling="rslora"))
    assert info["scaling"] == 4.0 and info["scaling_rule"] == "rslora"
    _randomize_adapters(ours)
    names = sorted(lora.lora_layers(ours))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=names, modules_to_save=["classifier"],
                        use_rslora=True, fan_in_fan_out=arch == "tiny-gpt2")
    peft_model = get_peft_model(tiny(arch)[0], config)
    with torch.no_grad():
        for name in names:
            theirs = peft_model.base_model.model.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(ours.get_submodule(name).lora_A.weight)
            theirs.lora_B["default"].weight.copy_(ours.get_submodule(name).lora_B.weight)
        head = peft_model.base_model.model.classifier.modules_to_save["default"]
        head.load_state_dict(ours.classifier.state_dict())
    mine = _logits(ours, batch)
    assert torch.allclose(_logits(peft_model, batch), mine, atol=1e-5)
    out = lora.export_peft(ours, tmp_path / "peft")
    assert json.loads((out / "adapter_config.json").read_text())["use_rslora"] is True
    loaded = load_peft_folder(tiny(arch)[0], out)
    assert torch.allclose(_logits(loaded, batch), mine, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lr_ratio_gives_b_its_own_learning_rate(tiny, method: str) -> None:
    """LoRA+: the harness's optimizer gives every B matrix lr * lr_ratio, everything else lr
    (biases and vectors still without weight decay); ratio 1 keeps the two plain groups."""
    from experiments.train import build_optimizer

    cfg = resolve([f"method={method}", "lr=1e-3", "weight_decay=0.1", f"{method}.lr_ratio=16"])
    model, _, _ = tiny("tiny-bert")
    METHODS[method].apply(model, cfg.method_cfg)
    opt = build_optimizer(model, cfg, "fp32")
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert set(lr_of) == {id(p) for p in model.parameters() if p.requires_grad}
    for pid, (lr, decay) in lr_of.items():
        name = names[pid]
        assert lr == pytest.approx(1.6e-2 if ".lora_B." in name else 1e-3), name
        assert decay == (0.0 if name.endswith(("bias", "magnitude")) else 0.1), name
    plain = resolve([f"method={method}", "lr=1e-3"])
    fresh, _, _ = tiny("tiny-bert")
    METHODS[method].apply(fresh, plain.method_cfg)
    assert [g["lr"] for g in build_optimizer(fresh, plain, "fp32").param_groups] == [1e-3, 1e-3]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_merge_and_unmerge(tiny, make_batch, arch: str) -> None:
    """Merged logits equal unmerged ones; unmerge restores the base weights."""
    model, tok, _ = tiny(arch)
    batch = make_batch(tok)
    lora.apply(model, lora.Config(rank=4))
    _randomize_adapters(model)
    weights = {n: m.weight.detach().clone() for n, m in lora.lora_layers(model).items()}
    unmerged = _logits(model, batch)
    assert lora.merge(model) == len(weights)
    assert all(m.merged for m in lora.lora_layers(model).values())
    assert torch.allclose(_logits(model, batch), unmerged, atol=1e-5)
    lora.unmerge(model)
    for n, m in lora.lora_layers(model).items():
        assert torch.allclose(m.weight, weights[n], atol=1e-6)
    assert torch.allclose(_logits(model, batch), unmerged, atol=1e-5)


def test_pretrained_state_dict_loads_into_the_wrapped_model(tiny) -> None:
    """Base keys keep their names: a base checkpoint loads, only the adapters are missing."""
    model, _, _ = tiny("tiny-gpt2")
    donor, _, _ = tiny("tiny-gpt2")
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(1.0)
    lora.apply(model, lora.Config(rank=4))
    result = model.load_state_dict(donor.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".lora_" in k for k in result.missing_keys)
    assert torch.equal(model.backbone.h[0].attn.c_attn.weight,
                       donor.backbone.h[0].attn.c_attn.weight)


def test_save_and_load_only_the_adapter(tiny, make_batch, tmp_path: Path) -> None:
    """The file holds adapters and head only, and restores the same logits in a fresh model."""
    from safetensors.torch import load_file

    model, tok, _ = tiny("tiny-bert")
    batch = make_batch(tok)
    lora.apply(model, lora.Config(rank=4))
    _randomize_adapters(model)
    with torch.no_grad():
        model.classifier.weight.add_(0.5)
    path = lora.save_adapter(model, tmp_path / "adapter.safetensors")
    keys = set(load_file(str(path)))
    assert keys == {n for n in dict(model.named_parameters()) if ".lora_" in n} | {
        "classifier.weight", "classifier.bias"}
    fresh, _, _ = tiny("tiny-bert")
    lora.apply(fresh, lora.Config(rank=4))
    lora.merge(fresh)  # loading into a merged model re-merges the loaded update
    lora.load_adapter(fresh, path)
    assert torch.allclose(_logits(fresh, batch), _logits(model, batch), atol=1e-5)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_same_adapters_give_peft_logits(tiny, make_batch, arch: str) -> None:
    """Our LoRA with PEFT's A and B gives PEFT's logits (PEFT only as a test oracle)."""
    from peft import LoraConfig, get_peft_model

    ours, tok, _ = tiny(arch)
    ref, _, _ = tiny(arch)
    batch = make_batch(tok)
    lora.apply(ours, lora.Config(rank=4, alpha=8.0))
    _randomize_adapters(ours)
    names = sorted(lora.lora_layers(ours))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=names, modules_to_save=["classifier"],
                        fan_in_fan_out=arch == "tiny-gpt2")
    peft_model = get_peft_model(ref, config)
    with torch.no_grad():
        for name in names:
            theirs = peft_model.base_model.model.get_submodule(name)
            mine = ours.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(mine.lora_A.weight)
            theirs.lora_B["default"].weight.copy_(mine.lora_B.weight)
    assert torch.allclose(_logits(peft_model, batch), _logits(ours, batch), atol=1e-6)


@pytest.mark.parametrize(("arch", "embeddings"), [(a, False) for a in TINY_ARCHS]
                         + [("tiny-bert", True)])
def test_peft_export_loads_in_peft(tiny, make_batch, tmp_path: Path, arch: str,
                                   embeddings: bool) -> None:
    """`export_peft` writes a folder `PeftModel.from_pretrained` loads, with equal logits."""
    import json

    ours, tok, _ = tiny(arch)
    batch = make_batch(tok)
    lora.apply(ours, lora.Config(rank=4, alpha=8.0, train_embeddings=embeddings))
    _randomize_adapters(ours)
    with torch.no_grad():
        ours.classifier.weight.add_(0.5)  # the head must come from the file, not the base
        if embeddings:
            ours.get_input_embeddings().weight.add_(0.1)
    out = lora.export_peft(ours, tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "FEATURE_EXTRACTION"
    assert (config["modules_to_save"] is not None) == embeddings  # the head: head.safetensors
    base, _, _ = tiny(arch)
    loaded = load_peft_folder(base, out)
    assert torch.allclose(_logits(loaded, batch), _logits(ours, batch), atol=1e-5)
