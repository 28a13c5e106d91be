"""Evaluation: accuracy (and macro-F1) over a split, gathered across ranks, and byte formatting."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, ctx: Any,
             num_labels: int) -> dict[str, float]:
    """Accuracy (and macro-F1 with more than two classes) over a whole split.

    Under several processes each rank sees its shard (`distributed.eval_loader`); predictions
    are gathered so every example counts exactly once."""
    from experiments import distributed

    was_training = model.training
    model.eval()
    preds, labels = [], []
    real = getattr(loader, "real_sizes", None)  # rows of each batch that are not padding
    for i, batch in enumerate(loader):
        batch = ctx.to_device(batch)
        y = batch.pop("labels")
        with ctx.autocast():
            logits = model(**batch).logits
        keep = len(y) if real is None else real[i]
        preds.append(logits.argmax(-1).cpu()[:keep])
        labels.append(y.cpu()[:keep])
    model.train(was_training)
    pred, true = torch.cat(preds), torch.cat(labels)
    pred, true = distributed.gather_rows(pred, ctx.dist), distributed.gather_rows(true, ctx.dist)
    return classification_metrics(pred.numpy(), true.numpy(), num_labels)


def classification_metrics(pred: np.ndarray, true: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, n, and macro-F1 over classes when there are more than two."""
    out = {"accuracy": float((pred == true).mean()), "n": int(len(true))}
    if num_labels > 2:
        f1s = []
        for c in range(num_labels):
            tp = np.sum((pred == c) & (true == c))
            denom = np.sum(pred == c) + np.sum(true == c)
            f1s.append(2 * tp / denom if denom else 0.0)
        out["macro_f1"] = float(np.mean(f1s))
    return out
