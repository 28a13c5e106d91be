"""Evaluation: accuracy (and macro-F1) over a split, sharded across ranks and gathered."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiments import distributed
from experiments.distributed import DistInfo


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, ctx: Any,
             num_labels: int) -> dict[str, float]:
    """Accuracy (and macro-F1 with more than two classes) over a whole split.

    Under several processes each rank sees its shard (`distributed.eval_loader`); predictions
    are gathered so every example counts exactly once."""
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


def eval_batches(n: int, batch: int, rank: int, world: int) -> tuple[list[list[int]], list[int]]:
    """This rank's index lists per global eval batch, and how many of each are real rows.

    Every rank gets a batch for every global batch (an empty share runs one padding row) so
    all ranks make the same number of forward calls: FSDP all-gathers inside each."""
    batches, real = [], []
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        size = -(-len(idx) // world)
        mine = idx[rank * size:(rank + 1) * size]
        real.append(len(mine))
        batches.append(mine or idx[:1])
    return batches, real


def eval_loader(dataset: Any, batch: int, collate: Any, info: DistInfo,
                generator: torch.Generator) -> DataLoader:
    """A loader over this rank's share of a split; `real_sizes` marks padding rows."""
    if not info.enabled:
        return DataLoader(dataset, batch_size=batch, collate_fn=collate, generator=generator)
    batches, real = eval_batches(len(dataset), batch, info.rank, info.world)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, generator=generator)
    loader.real_sizes = real
    return loader
