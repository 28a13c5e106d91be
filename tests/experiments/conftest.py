"""Fixtures the harness's multi-process tests share."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def nodrop(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny BERT without dropout, saved as a local model: every rank's forward is then a
    fixed function of its rows, so the trajectories can be compared step by step."""
    from transformers import AutoModel, BertConfig

    from experiments.inputs.backbones import load_tokenizer, minilm_path

    tok = load_tokenizer(minilm_path())
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512, vocab_size=len(tok),
                     pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("nodrop")
    AutoModel.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
