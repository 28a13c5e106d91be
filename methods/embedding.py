"""Input adapter: the input token embedding matrix trains (plus the head); the rest is frozen.

The lecture's "train input embedding (maybe classifier)": every token's vector may move, while
the transformer's computation stays fixed. `embedding.train_positions=true` also trains the learned
absolute position embeddings (BERT, RoBERTa, DistilBERT, GPT-2; LLaMA's rotary positions have
none to train).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import MethodError
from methods.model import param_split, position_embeddings

# A row only moves when its token occurs, so it needs a large step for 2 epochs. Checked on a
# rotten_tomatoes subsample (train_size=2000 eval_size=500): validation 0.702 at 1e-3, 0.784 at
# 3e-3. No weight decay: AdamW's decoupled decay would shrink every row at
# every step, also the rows of tokens that never occur.
PRESET = {"lr": 3e-3, "epochs": 2, "weight_decay": 0.0}


@dataclass
class Config:
    """Options of the input-embedding method."""

    train_positions: bool = False  # also train the learned absolute position embeddings


def apply(model: nn.Module, cfg: Config) -> dict:
    """Freeze everything but the input token embeddings (and positions, if asked) and the head."""
    positions = position_embeddings(model) if cfg.train_positions else None
    if cfg.train_positions and positions is None:
        raise MethodError(f"embedding.train_positions=true, but the {model.config.model_type} "
                        "backbone has no learned position embeddings (rotary or none); "
                        "leave it false")
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    emb.weight.requires_grad_(True)
    if positions is not None:
        for p in positions.parameters():
            p.requires_grad_(True)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    expected = emb.weight.numel() + (positions.weight.numel() if positions is not None else 0)
    assert param_split(model)["embedding"] == expected, "only the embeddings count as embedding"
    trains = "input token embeddings" + (" + position embeddings" if positions else "")
    return {"trains": trains + " + classifier head", "head_trained": True,
            "embedding_shape": list(emb.weight.shape), "positions_trained": positions is not None}
