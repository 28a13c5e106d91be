"""Benchmark workloads: the harness's step on a fixed batch, honest FLOP counts, fair ablations."""

from __future__ import annotations

import pytest
import torch

from bench.peft_vs_ours import OPTIONS, TextbookLoRALinear, peft_lora, textbook
from bench.workloads import Settings, build, real_batch

ARCHS = ("tiny-bert", "tiny-gpt2", "tiny-llama")


def settings(model: str = "tiny-bert") -> Settings:
    """A tiny CPU workload: batch 4 x 16 tokens."""
    return Settings(torch.device("cpu"), "fp32", model=model, batch_size=4, seq_len=16,
                    warmup=2, progress=False)


def test_real_batch_has_the_fixed_shape(tiny) -> None:
    _, tok, _ = tiny("tiny-bert")
    batch = real_batch(tok, 4, 16)
    assert batch["input_ids"].shape == (4, 16) and batch["attention_mask"].shape == (4, 16)
    assert batch["labels"].tolist() != [] and set(batch["labels"].tolist()) <= {0, 1}


def test_cached_head_is_charged_only_its_own_matmuls() -> None:
    w = build("head", "head", ["head.cache_features=true"], settings())
    hidden, classes, rows = w.model.config.hidden_size, 2, 4
    # Forward x W^T and the weight gradient: 2 * (2 * rows * hidden * classes); no input grad.
    assert w.flops == 4 * rows * hidden * classes
    assert w.tokens == 0 and set(w.batch) == {"features", "labels"}


def test_full_counts_near_6nt_and_lora_less() -> None:
    full = build("full", "full", [], settings())
    # Rank 1: on a model this narrow (hidden 32) rank 8 would rival the base layers' cost.
    adapter = build("lora", "lora", ["lora.targets=all", "lora.rank=1"], settings())
    full_row = full.summary([0.01])
    # Counted FLOPs of full fine-tuning: 6 N T for the linear layers plus attention scores.
    assert 0.9 < full_row["flops_per_step"] / full_row["flops_6nt"] < 1.3
    # Frozen layers skip their weight gradients: about two thirds of full's count.
    assert 0.5 < adapter.flops / full.flops < 0.8
    assert full.tokens == adapter.tokens == 4 * 16


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_update_equals_the_textbook_form(arch: str) -> None:
    """Ours (fused addmm) and the ablation compute the same loss and gradients."""
    ours = build("ours", "lora", OPTIONS, settings(arch), warmup=0)
    book = build("book", "lora", OPTIONS, settings(arch), adapt=textbook, warmup=0)
    assert any(isinstance(m, TextbookLoRALinear) for m in book.model.modules())
    with torch.no_grad():  # B is zero at init; give the update something to do
        for a, b in zip(ours.model.parameters(), book.model.parameters(), strict=True):
            if a.requires_grad:
                a.normal_(std=0.05)
                b.copy_(a)
    ours.model.eval()
    book.model.eval()
    losses = []
    for w in (ours, book):
        loss = w.model(**w.batch).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(ours.trainable, book.trainable, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_peft_contestant_trains_what_ours_trains() -> None:
    ours = build("ours", "lora", OPTIONS, settings(), warmup=0)
    theirs = build("peft", "lora", OPTIONS, settings(), adapt=peft_lora, warmup=0)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(ours.model) == count(theirs.model)
    assert {n.rpartition(".")[2] for n, p in theirs.model.named_parameters()
            if p.requires_grad} == {"weight", "bias"}
    assert any("lora_A" in n for n, _ in theirs.model.named_parameters())
