"""QLoRA's 4-bit base: a dequantised model is the oracle, the constants' closed form is exact,
LoRA trains on top of Linear4bit layers, and what cannot work is refused in one line."""

from __future__ import annotations

import pytest
import torch
from helpers import eval_logits
from torch import nn
from transformers.pytorch_utils import Conv1D

from methods import lora, quantize
from methods.base import MethodError


def _dequantised_copy(tiny, arch: str, quantised: nn.Module) -> nn.Module:
    """The same tiny model in fp32, each linear weight set to the 4-bit layer's dequantised one."""
    model, _, _ = tiny(arch)
    q_layers = dict(quantised.named_modules())
    with torch.no_grad():
        for name, layer in quantize.backbone_linears(model).items():
            w = quantize.dequantized(q_layers[name].weight)
            layer.weight.copy_(w.T if isinstance(layer, Conv1D) else w)
    return model


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_dequantised_weights_give_the_same_logits(tiny, make_batch, arch: str, quant_type: str,
                                                  double_quant: bool) -> None:
    """The oracle: a 4-bit model computes what an fp32 model built from its dequantised weights
    computes (and differs from the original model: the weights really are 4-bit)."""
    model, tok, _ = tiny(arch)
    batch = make_batch(tok)
    before = eval_logits(model, batch)
    info = quantize.quantize_backbone(model, quant_type, double_quant)
    assert info["quantized_layers"] > 0 and not quantize.backbone_linears(model)
    oracle = _dequantised_copy(tiny, arch, model)
    got = eval_logits(model, batch)
    torch.testing.assert_close(got, eval_logits(oracle, batch), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(got, before, atol=1e-4)


@pytest.mark.parametrize("double_quant", [True, False])
def test_constants_in_closed_form_match_bitsandbytes(tiny, double_quant: bool) -> None:
    """`layout`'s bytes (n/2 for the codes, `constant_bytes` for the scales and tables) are
    the storages bitsandbytes allocated."""
    model, _, _ = tiny("tiny-bert")
    n = sum(m.weight.numel() for m in quantize.backbone_linears(model).values())
    quantize.quantize_backbone(model, "nf4", double_quant)
    weights, constants = quantize.quantized_tensors(model)
    stored = {"quantized_params": n,
              "quantized_weight_bytes": sum(w.untyped_storage().nbytes() for w in weights),
              "quant_constant_bytes": sum(t.untyped_storage().nbytes() for t in constants)}
    assert quantize.layout(model) == stored
    assert stored["quantized_weight_bytes"] == n // 2


def test_qlora_wraps_4bit_layers_and_trains_only_adapters(tiny, make_batch) -> None:
    """LoRA on a 4-bit base: starts as the 4-bit model, the adapters and head get gradients, the
    4-bit weights none, and an optimizer step changes the output."""
    model, tok, _ = tiny("tiny-bert")
    batch = make_batch(tok)
    quantize.quantize_backbone(model, "nf4", True)
    base = eval_logits(model, batch)
    model, _, _ = tiny("tiny-bert")
    info = lora.apply(model, lora.Config(rank=2, quantize="nf4"))
    assert info["quantize"] == "nf4" and info["quantized_layers"] == 12
    layers = lora.lora_layers(model)
    assert layers and all(m.quantized and quantize.is_4bit(m.weight) for m in layers.values())
    torch.testing.assert_close(eval_logits(model, batch), base)
    model.train()
    model(**batch).loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained)
    assert all(p.grad is None for p in quantize.quantized_tensors(model)[0])
    torch.optim.AdamW(trained, lr=1e-2).step()
    assert not torch.allclose(eval_logits(model, batch), base)
    with pytest.raises(MethodError, match="4 bits"):
        lora.merge(model)


def test_bad_quantize_options_are_refused() -> None:
    """An unknown type, or a 4-bit base under DoRA, is a one-line MethodError."""
    from methods import dora

    with pytest.raises(MethodError, match="lora.quantize='int3' is not one of"):
        lora.Config(quantize="int3").validate()
    with pytest.raises(MethodError, match="dora.quantize=nf4"):
        dora.Config(quantize="nf4").validate()
