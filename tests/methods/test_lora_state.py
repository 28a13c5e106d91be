"""LoRA's state dicts say whether the update is merged into the weights; no dead options."""

from __future__ import annotations

import re

import pytest
import torch

from experiments.harness.config import UserError, resolve
from methods import lora


def _trained(tiny):  # noqa: ANN001, ANN202
    """A tiny BERT with LoRA whose B matrices are non-zero (the update is not a no-op)."""
    model, tok, _ = tiny("tiny-bert")
    lora.apply(model, lora.Config(rank=4))
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.weight.normal_()
    return model, tok


def test_a_merged_state_dict_refuses_an_unmerged_model(tiny, make_batch) -> None:
    model, tok = _trained(tiny)
    batch = make_batch(tok)
    model.eval()
    with torch.no_grad():
        expected = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    lora.merge(model)
    merged = model.state_dict()
    fresh, _ = _trained(tiny)
    with pytest.raises(RuntimeError, match=re.escape("saved merged (the LoRA update folded into "
                                                     "the weight), this layer is unmerged; call "
                                                     "methods.lora.merge(model)")):
        fresh.load_state_dict(merged)
    lora.merge(fresh)  # the same state on both sides: it loads, and gives the same model
    fresh.load_state_dict(merged)
    lora.unmerge(fresh)
    fresh.eval()
    with torch.no_grad():
        got = fresh(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_an_unmerged_state_dict_refuses_a_merged_model(tiny) -> None:
    model, _ = _trained(tiny)
    unmerged = model.state_dict()
    assert not any(k.endswith(lora.MERGED_KEY) for k in unmerged)  # keys as before merging
    fresh, _ = _trained(tiny)
    lora.merge(fresh)
    with pytest.raises(RuntimeError, match=re.escape("call methods.lora.unmerge(model)")):
        fresh.load_state_dict(unmerged)


def test_no_output_embedding_option() -> None:
    """`train_output_embeddings` could not work: our head replaces every LM head."""
    assert "train_output_embeddings" not in lora.Config.__dataclass_fields__
    with pytest.raises(UserError, match="unknown config key 'lora.train_output_embeddings'"):
        resolve(["method=lora", "lora.train_output_embeddings=true"])
