"""Activation checkpointing: the same loss and gradients as without it, for a method that
freezes the backbone and for full fine-tuning; a one-line error where it cannot apply."""

from __future__ import annotations

import pytest
import torch

from experiments.harness import recompute
from experiments.harness.config import UserError
from methods import METHODS


def _grads(tiny, method: str, checkpointing: bool) -> tuple[float, dict]:
    model, tok, _ = tiny("tiny-bert")
    spec = METHODS[method]
    spec.apply(model, spec.Config())
    if checkpointing:
        assert recompute.enable(model, method)["checkpointed_modules"] > 0
    model.train()
    batch = dict(tok(["a good film", "the worst movie of the year"], padding=True,
                     return_tensors="pt"))
    loss = model(**batch, labels=torch.tensor([1, 0])).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full", "prefix"])
def test_same_loss_and_gradients(tiny, method: str) -> None:
    """Recomputing gives what keeping gave (dropout is off in the tiny fixture)."""
    loss, grads = _grads(tiny, method, False)
    loss_c, grads_c = _grads(tiny, method, True)
    assert loss_c == pytest.approx(loss, abs=1e-6)
    assert grads_c.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_refused_where_it_cannot_apply(tiny) -> None:
    """head (cached features) and a backbone without checkpointing: one line, what to do."""
    model, _, _ = tiny("tiny-bert")
    with pytest.raises(UserError, match="does not apply to method=head"):
        recompute.enable(model, "head")
    model.backbone.supports_gradient_checkpointing = False
    with pytest.raises(UserError, match="no activation checkpointing for BertModel"):
        recompute.enable(model, "lora")
