"""Evaluation: accuracy, F1 and Matthews correlation over a split, sharded across ranks and
gathered, with the per-example predictions behind them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiments.dist import process as distributed
from experiments.dist.process import DistInfo
from experiments.harness.batching import token_lengths


@dataclass
class Predictions:
    """Per-example results over a split, in the split's order."""

    example: np.ndarray  # the example's index in the split
    label: np.ndarray
    predicted: np.ndarray  # the argmax of the logits
    probs: np.ndarray  # (examples, classes), softmax of the logits in fp32

    def frame(self) -> Any:
        """The predictions file's table (columns named in experiments/contract/record.py)."""
        import pandas as pd

        from experiments.contract import record as R

        cols = {R.PRED_EXAMPLE: self.example, R.PRED_LABEL: self.label,
                R.PRED_PREDICTED: self.predicted}
        cols.update({f"{R.PRED_PROB_PREFIX}{k}": self.probs[:, k]
                     for k in range(self.probs.shape[1])})
        return pd.DataFrame(cols)


class Evaluation(dict):
    """The metrics of a split (a dict: accuracy, n, macro_f1, f1 with two classes, mcc) with
    `.predictions` attached."""

    predictions: Predictions


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, ctx: Any,
             num_labels: int) -> Evaluation:
    """Accuracy, macro-F1 (and class 1's F1 with two classes) and Matthews correlation over a
    whole split, and the per-example predictions (`.predictions`).

    Under several processes each rank sees its shard (`distributed.eval_loader`); predictions
    are gathered with their example indices and put back in the split's order, so every
    example counts exactly once."""
    was_training = model.training
    model.eval()
    probs, preds, labels = [], [], []
    real = getattr(loader, "real_sizes", None)  # rows of each batch that are not padding
    for i, batch in enumerate(loader):
        batch = ctx.to_device(batch)
        y = batch.pop("labels")
        with ctx.autocast():
            logits = model(**batch).logits
        keep = len(y) if real is None else real[i]
        probs.append(logits.float().softmax(-1).cpu()[:keep])
        preds.append(logits.argmax(-1).cpu()[:keep])
        labels.append(y.cpu()[:keep])
    model.train(was_training)
    prob, pred, true = torch.cat(probs), torch.cat(preds), torch.cat(labels)
    ids = torch.as_tensor(getattr(loader, "example_ids", range(len(true))), dtype=torch.long)
    ids, prob, pred, true = (distributed.gather_rows(t, ctx.dist) for t in (ids, prob, pred, true))
    order = ids.argsort()
    result = Predictions(*(t[order].numpy() for t in (ids, true, pred, prob)))
    out = Evaluation(classification_metrics(result.predicted, result.label, num_labels))
    out.predictions = result
    return out


def classification_metrics(pred: np.ndarray, true: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, n, macro-F1 over classes, F1 of class 1 (two classes), and Matthews
    correlation (every task).

    Hand-written from the confusion matrix (numpy) rather than through scikit-learn, which the
    environment does not otherwise need; the formulas are sklearn's `f1_score` and
    `matthews_corrcoef` (the multi-class form of Gorodkin 2004; 0 when a marginal is constant)."""
    pred, true = np.asarray(pred, dtype=np.int64), np.asarray(true, dtype=np.int64)
    k = max(num_labels, int(pred.max(initial=0)) + 1, int(true.max(initial=0)) + 1)
    cm = np.bincount(true * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, predicted, actual = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(predicted + actual > 0, 2 * tp / (predicted + actual), 0.0)
    out = {"accuracy": float((pred == true).mean()) if len(true) else 0.0, "n": int(len(true)),
           "macro_f1": float(f1[:num_labels].mean())}
    if num_labels <= 2:
        out["f1"] = float(f1[1]) if k > 1 else 0.0
    n = cm.sum()
    cov_xy = tp.sum() * n - predicted @ actual
    cov_xx, cov_yy = n * n - predicted @ predicted, n * n - actual @ actual
    out["mcc"] = float(cov_xy / np.sqrt(cov_xx * cov_yy)) if cov_xx * cov_yy > 0 else 0.0
    return out


def eval_batches(n: int, batch: int, rank: int, world: int,
                 order: list[int] | None = None) -> tuple[list[list[int]], list[int]]:
    """This rank's index lists per global eval batch, and how many of each are real rows.

    Global batches are cut from `order` (default: the split's order). Every rank gets a batch
    for every global batch (an empty share runs one padding row) so all ranks make the same
    number of forward calls: FSDP all-gathers inside each."""
    order = list(range(n)) if order is None else order
    batches, real = [], []
    for start in range(0, n, batch):
        idx = order[start:start + batch]
        size = -(-len(idx) // world)
        mine = idx[rank * size:(rank + 1) * size]
        real.append(len(mine))
        batches.append(mine or idx[:1])
    return batches, real


def eval_loader(dataset: Any, batch: int, collate: Any, info: DistInfo,
                generator: torch.Generator, sort_by_length: bool = True) -> DataLoader:
    """A loader over this rank's share of a split; `real_sizes` marks padding rows and
    `example_ids` names the real rows' indices in the split, in the order they come.

    Batches hold examples of similar length (longest first), so little of an evaluation pass
    is padding; `evaluate` puts the predictions back in the split's order."""
    order = None
    if sort_by_length:
        lengths = token_lengths(dataset)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep order
    batches, real = eval_batches(len(dataset), batch, info.rank, info.world, order)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, generator=generator)
    loader.real_sizes = real
    loader.example_ids = [i for b, r in zip(batches, real, strict=True) for i in b[:r]]
    return loader
