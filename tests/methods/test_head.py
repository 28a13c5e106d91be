"""Head method: training on cached features reaches the uncached path's accuracy (whole harness)."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from experiments.config import resolve
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
