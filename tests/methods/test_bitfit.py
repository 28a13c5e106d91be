"""BitFit: exactly the backbone's bias terms train (linear and LayerNorm), counted from the
configs and checked against the biases PEFT's `bias="all"` marks trainable; LLaMA has none."""

from __future__ import annotations

import pytest
import torch

from experiments.harness.config import resolve
from methods import bitfit
from methods.base import MethodError
from methods.model import param_split

# Bias elements from the tiny configs (hidden 32, intermediate 64 or 128, 2 blocks):
# BERT/RoBERTa/DistilBERT per block q, k, v, out (4 x 32) + 2 LayerNorms (2 x 32) + MLP in (64)
# and out (32), plus the embeddings' LayerNorm (32); GPT-2 per block c_attn (96), c_proj (32),
# 2 LayerNorms (64), c_fc (128), mlp.c_proj (32), plus the final LayerNorm (32).
BIASES = {"tiny-bert": 2 * 288 + 32, "tiny-roberta": 2 * 288 + 32,
          "tiny-distilbert": 2 * 288 + 32, "tiny-gpt2": 2 * 352 + 32}


@pytest.mark.parametrize("arch", list(BIASES))
def test_only_biases_and_head_train(tiny, arch: str) -> None:
    """The trainable set is every backbone bias plus the head, of the analytic size; it is the
    set of biases PEFT's LoRA `bias="all"` trains (PEFT as an oracle for "every bias")."""
    from peft import LoraConfig, get_peft_model

    model, _, _ = tiny(arch)
    info = bitfit.apply(model, bitfit.Config())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained - {"classifier.weight", "classifier.bias"} == {
        n for n, _ in model.named_parameters() if n.startswith("backbone.") and
        n.endswith("bias")}
    assert info["bias_params"] == BIASES[arch]
    assert param_split(model)["trainable"] == BIASES[arch] + 32 * 2 + 2
    target = {"tiny-gpt2": "c_fc", "tiny-distilbert": "lin1"}.get(arch, "query")
    peft_model = get_peft_model(tiny(arch)[0], LoraConfig(r=1, target_modules=[target],
                                                          bias="all"))
    theirs = {n.removeprefix("base_model.model.").replace(".base_layer.", ".")
              for n, p in peft_model.named_parameters() if p.requires_grad and ".lora_" not in n}
    head = {"classifier.weight", "classifier.bias"}
    assert theirs - head == trained - head


def test_a_step_moves_biases_only(tiny, make_batch) -> None:
    """After an AdamW step every weight matrix is bit-identical, every bias has moved."""
    model, tok, _ = tiny("tiny-bert")
    bitfit.apply(model, bitfit.Config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**make_batch(tok)).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        assert moved == (n.endswith("bias") or n.startswith("classifier.")), n


def test_llama_has_no_biases(tiny) -> None:
    """LLaMA's linear layers and RMSNorms are bias-free: one clear line, model untouched."""
    model, _, _ = tiny("tiny-llama")
    with pytest.raises(MethodError, match="^bitfit: the llama backbone has no bias terms to "
                                          r"train; choose another method \(e.g. ia3 or lora\)$"):
        bitfit.apply(model, bitfit.Config())
    assert all(p.requires_grad for p in model.parameters())


def test_preset() -> None:
    """`method=bitfit` runs at its preset learning rate."""
    assert resolve(["method=bitfit"]).lr == bitfit.PRESET["lr"]
