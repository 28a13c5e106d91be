"""Input-embedding method: the position-embedding option, where the architecture has one."""

from __future__ import annotations

import pytest

from methods import embedding
from methods.base import MethodError
from methods.model import param_split


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-gpt2"])
def test_train_positions_adds_the_position_table(tiny, arch: str) -> None:
    """train_positions=true trains the (512, hidden) position table too, counted as embedding."""
    model, _, _ = tiny(arch)
    info = embedding.apply(model, embedding.Config(train_positions=True))
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    assert info["positions_trained"]
    split = param_split(model)
    assert split["embedding"] == (vocab + 512) * hidden
    assert split["trainable"] == split["embedding"] + split["head"]


def test_rotary_model_has_no_positions_to_train(tiny) -> None:
    """LLaMA's positions are rotary: asking to train them is a one-line MethodError."""
    model, _, _ = tiny("tiny-llama")
    with pytest.raises(MethodError, match="no learned position embeddings"):
        embedding.apply(model, embedding.Config(train_positions=True))
