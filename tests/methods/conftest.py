"""Method-test fixtures: a small right-padded batch and the LoRA target table per architecture."""

from __future__ import annotations

import pytest
import torch

TEXTS = ["a good film", "the worst movie of the year, truly bad and far too long"]

# Linear layers inside each transformer block of the tiny test models (2 blocks each):
# path inside the block -> (role, in_features, out_features). BERT's `dense` and GPT-2's
# `c_proj` appear under both roles: the role comes from the parent module, not the leaf.
_BERT = {
    "attention.self.query": ("attention", 32, 32),
    "attention.self.key": ("attention", 32, 32),
    "attention.self.value": ("attention", 32, 32),
    "attention.output.dense": ("attention", 32, 32),
    "intermediate.dense": ("mlp", 32, 64),
    "output.dense": ("mlp", 64, 32),
}
LORA_TABLE = {
    "tiny-bert": _BERT,
    "tiny-roberta": _BERT,
    "tiny-distilbert": {
        "attention.q_lin": ("attention", 32, 32),
        "attention.k_lin": ("attention", 32, 32),
        "attention.v_lin": ("attention", 32, 32),
        "attention.out_lin": ("attention", 32, 32),
        "ffn.lin1": ("mlp", 32, 64),
        "ffn.lin2": ("mlp", 64, 32),
    },
    "tiny-gpt2": {  # Conv1D layers (weight stored as (in, out)); n_inner = 4 * 32
        "attn.c_attn": ("attention", 32, 96),
        "attn.c_proj": ("attention", 32, 32),
        "mlp.c_fc": ("mlp", 32, 128),
        "mlp.c_proj": ("mlp", 128, 32),
    },
    "tiny-llama": {  # hidden 64, 4 heads of 16, 2 key/value heads -> k/v out 32
        "self_attn.q_proj": ("attention", 64, 64),
        "self_attn.k_proj": ("attention", 64, 32),
        "self_attn.v_proj": ("attention", 64, 32),
        "self_attn.o_proj": ("attention", 64, 64),
        "mlp.gate_proj": ("mlp", 64, 128),
        "mlp.up_proj": ("mlp", 64, 128),
        "mlp.down_proj": ("mlp", 128, 64),
    },
}
BLOCKS = 2


def lora_params(arch: str, rank: int, role: str = "all") -> int:
    """The analytic adapter size: rank * (in + out) over the selected layers of every block."""
    rows = [v for v in LORA_TABLE[arch].values() if role == "all" or v[0] == role]
    return BLOCKS * sum(rank * (n_in + n_out) for _, n_in, n_out in rows)


@pytest.fixture(scope="session")
def lora_table() -> dict:
    """LORA_TABLE, with `lora_params` as key "count" for tests in other files."""
    return {"table": LORA_TABLE, "count": lora_params}


@pytest.fixture(scope="session")
def make_batch():  # noqa: ANN201
    """A factory: make_batch(tokenizer, texts=TEXTS) -> dict with labels, right-padded."""

    def make(tok, texts: list[str] = TEXTS) -> dict[str, torch.Tensor]:  # noqa: ANN001
        batch = dict(tok(texts, padding=True, return_tensors="pt"))
        batch["labels"] = torch.arange(len(texts)) % 2
        return batch

    return make
