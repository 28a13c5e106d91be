"""Classifier head (linear probe): the backbone is frozen; only the head trains.

The frozen backbone in eval mode is a fixed function, so by default its pooled features are
computed once per split and the head trains on them (`head.cache_features=true`); the uncached
path runs the backbone every step and must reach the same accuracy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

# A linear probe needs a far larger step than fine-tuning and many cheap epochs on cached
# features; chosen on rotten_tomatoes validation (see README, "Presets").
PRESET = {"lr": 3e-3, "epochs": 30, "weight_decay": 0.0, "warmup_ratio": 0.0}


@dataclass
class Config:
    """Options of the classifier-head method."""

    cache_features: bool = True  # compute frozen features once per split, train the head on them


def apply(model: nn.Module, cfg: Config) -> dict:
    """Freeze everything but the classification head; keep the backbone in eval mode."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.classifier.parameters():
        p.requires_grad_(True)
    model.backbone_eval = True  # dropout off in the frozen part: the features are fixed
    path = "cached_features" if cfg.cache_features else "uncached"
    return {"trains": "classifier head only", "path": path}


class FeatureDataset(torch.utils.data.Dataset):
    """Cached pooled features and labels of one split."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "labels": self.labels[i]}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        # One gather per batch instead of 32 item lookups and a collate: the head's step is
        # so small that per-item overhead would dominate it.
        index = torch.as_tensor(idx)
        return {"features": self.features[index], "labels": self.labels[index]}


def _already_batched(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def _by_length(ds: Any) -> list[int]:
    """Example indices, longest first (the split's order when lengths are unknown)."""
    if "input_ids" not in getattr(ds, "column_names", ()):
        return list(range(len(ds)))
    lengths = [len(ids) for ids in ds.with_format(None)["input_ids"]]
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.no_grad()
def prepare_data(model: nn.Module, splits: dict[str, Any], collate: Any, cfg: Any,
                 ctx: Any) -> tuple[dict[str, Any], Any, dict]:
    """Harness hook: replace each tokenized split by the backbone's pooled features."""
    if not cfg.method_cfg.cache_features:
        return splits, collate, {}
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    out = {}
    for name, ds in splits.items():
        # Batches of similar length (longest first) pad little; the features are put back in
        # the split's order. A private generator: iterating a DataLoader draws a seed from its
        # generator, and a draw from the global RNG would shift every later dropout mask.
        order = _by_length(ds)
        batches = [order[i:i + cfg.eval_batch_size]
                   for i in range(0, len(order), cfg.eval_batch_size)]
        loader = DataLoader(ds, batch_sampler=batches, collate_fn=collate,
                            generator=torch.Generator())
        feats, labels = [], []
        # A bar only on a terminal (piped, each redraw would be a line), as the harness's.
        shown = cfg.progress and sys.stderr.isatty()
        for batch in tqdm(loader, desc=f"features {name}", disable=not shown, leave=False):
            labels.append(batch.pop("labels"))
            with ctx.autocast():
                f = model.encode(**ctx.to_device(batch))
            feats.append(f.float().cpu())
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.as_tensor(order)] = torch.arange(len(order))
        out[name] = FeatureDataset(torch.cat(feats)[back], torch.cat(labels)[back])
    model.train(was_training)
    return out, _already_batched, {"features_s": round(time.perf_counter() - start, 3),
                       "feature_dim": int(next(iter(out.values())).features.shape[1])}
