"""Head method: training on cached features reaches the uncached path's accuracy (whole harness)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from experiments.harness.config import resolve
from experiments.train import run

POSITIVE = ["great", "wonderful", "superb", "brilliant", "delightful", "moving", "funny"]
NEGATIVE = ["awful", "boring", "dreadful", "terrible", "dull", "bad", "clumsy"]
FILLER = ["the", "film", "movie", "plot", "was", "a", "story", "with", "actors", "and"]


def _sentiment_csv(path: Path, rows: int = 1000) -> Path:
    """A learnable two-class task: sentiment words mixed with neutral filler. Every word is one
    WordPiece token, so every row has the same length and no batch is padded: both paths then
    compute the same features up to kernel rounding."""
    rng = random.Random(0)
    records = []
    for i in range(rows):
        words = POSITIVE if i % 2 else NEGATIVE
        text = rng.sample(words, 3) + rng.sample(FILLER, 4)
        rng.shuffle(text)
        records.append({"text": " ".join(text), "label": "pos" if i % 2 else "neg"})
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def test_cached_and_uncached_features_reach_the_same_accuracy(tmp_path: Path) -> None:
    """The frozen backbone in eval mode is a fixed function: caching its features changes speed,
    not results (test accuracy within 0.01 on a fixed seed)."""
    data = _sentiment_csv(tmp_path / "sentiment.csv")
    # No head dropout: the feature pass draws from the global RNG (one base seed per DataLoader
    # iterator), which would shift the dropout masks and compare two random draws, not two paths.
    common = ["method=head", "model=tiny-bert", f"data={data}", "epochs=2", "lr=1e-2",
              "classifier_dropout=0", "max_length=16", "seed=0", "wandb=disabled",
              "progress=false"]
    cached = run(resolve([*common, "head.cache_features=true"]))
    uncached = run(resolve([*common, "head.cache_features=false"]))
    assert cached["method_info"]["path"] == "cached_features"
    assert uncached["method_info"]["path"] == "uncached"
    acc = cached["metrics"]["test/accuracy"], uncached["metrics"]["test/accuracy"]
    assert acc[0] > 0.6, acc  # the probe learned something, so the comparison means something
    assert abs(acc[0] - acc[1]) <= 0.01 + 1e-9, acc  # 100 test rows: at most one differs


def test_cached_features_are_each_examples_own_in_the_splits_order(tiny) -> None:  # noqa: ANN001
    """The feature pass batches by length (longest first) and must put every feature back at
    its example's index: each cached row equals that example's features computed alone."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from experiments.harness.runtime import Context
    from methods import head

    model, tok, _ = tiny("tiny-bert")
    head.apply(model, head.Config())
    texts = ["a", "a much longer review of a film that goes on", "mid length text here", "b c"]
    ds = Dataset.from_dict({"text": texts, "label": [0, 1, 0, 1]}).map(
        lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    ds = ds.rename_column("label", "labels").with_format("torch")
    cfg = type("Cfg", (), {"method_cfg": head.Config(), "eval_batch_size": 2, "progress": False})
    ctx = Context(torch.device("cpu"), "fp32")
    out, _, _ = head.prepare_data(model, {"test": ds}, DataCollatorWithPadding(tok), cfg, ctx)
    model.eval()
    for i, text in enumerate(texts):
        alone = model.encode(**{k: v for k, v in tok([text], return_tensors="pt").items()})
        torch.testing.assert_close(out["test"].features[i], alone[0], atol=1e-5, rtol=1e-4)
        assert out["test"].labels[i].item() == i % 2
