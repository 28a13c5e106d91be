"""The training data order: seeded, resumable at any batch, length-grouped, sharded over ranks.

Random batches of short texts are mostly padding: on Rotten Tomatoes (mean 27 tokens, p95 47 of
max 64) random batches of 32 pad the train split to 1.92x its real tokens. Grouping by length, as
the usual trainers' `group_by_length` does, brings that to about 1.02x: each epoch is shuffled,
cut into mega-batches of `group` batches, and each mega-batch sorted by length before it is cut
into batches, so a batch holds texts of similar length while every epoch still mixes them. The
batches are then shuffled (seeded), so no run sees long batches first and short ones last.

Under several processes every global batch is cut into `world` slices and rank r takes slice r,
so the ranks together see exactly the single-process batch. A short last batch may leave a rank
with no real row: it then takes one padding row (a negative index, see `PaddedRows`) whose label
is ignored, so every rank takes the same number of steps (a rank that skipped a step would hang
the others in their all-reduce), and the loss is divided by the global batch's real rows, not by
each rank's, so a short batch weighs as it does in one process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100  # torch's cross_entropy default: a padding row adds nothing to the loss


class EpochOrder(torch.utils.data.Sampler[list[int]]):
    """Per-epoch batches of dataset indices for this rank (a batch sampler).

    The batches of epoch e depend only on (seed, e, lengths), so a resumed run sees the same
    batches as an uninterrupted one; `set_position` starts an epoch at any global batch.
    `lengths` (tokens per example) and `group` > 0 turn on length grouping."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 lengths: Sequence[int] | None = None, group: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self.lengths = None if lengths is None else torch.as_tensor(lengths)
        self.group = group if lengths is not None else 0
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch `epoch` (0-based) from global batch `start_batch` on."""
        self.epoch, self.start_batch = epoch, start_batch

    def global_batches(self) -> list[list[int]]:
        """Every global batch of this epoch, in the order they are taken."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        if self.group <= 0:
            return [order[i:i + self.batch_size].tolist()
                    for i in range(0, self.n, self.batch_size)]
        mega = self.group * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, self.n, mega):
            chunk = order[start:start + mega]
            # stable sort: equal lengths keep their shuffled order
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            batches += [chunk[i:i + self.batch_size].tolist()
                        for i in range(0, len(chunk), self.batch_size)]
        # The short batch (if any) stays last, as without grouping: every other batch is full.
        full, short = ([b for b in batches if len(b) == self.batch_size],
                       [b for b in batches if len(b) < self.batch_size])
        shuffle = torch.randperm(len(full), generator=gen).tolist()
        return [full[i] for i in shuffle] + short

    def rank_slice(self, batch: list[int]) -> list[int]:
        """This rank's share of a global batch; an empty share is one padding row."""
        size = -(-len(batch) // self.world)  # the last, short batch split as evenly as possible
        mine = batch[self.rank * size:(self.rank + 1) * size]
        return mine or [-1 - batch[0]]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        for b in range(self.start_batch, len(batches)):
            yield self.rank_slice(batches[b])

    def global_size(self, b: int) -> int:
        """Real rows in global batch b of an epoch (every batch is full but the last)."""
        return min(self.batch_size, self.n - b * self.batch_size)

    def batches(self) -> range:
        """Global batch indices of one epoch."""
        return range(-(-self.n // self.batch_size))

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.start_batch)


class PaddedRows(torch.utils.data.Dataset):
    """A dataset whose negative indices are padding rows: row -1-i with its label ignored."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i >= 0:
            return self.dataset[i]
        row = dict(self.dataset[-1 - i])
        row["labels"] = torch.tensor(IGNORE_INDEX)
        return row

    def __getitems__(self, idx: list[int]) -> Any:
        """A batch at once where the dataset can (the head's cached features gather a batch in
        one indexing); otherwise row by row."""
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None:
            return [self[i] for i in idx]
        out = getitems([i if i >= 0 else -1 - i for i in idx])
        pad = torch.tensor([i < 0 for i in idx])
        if pad.any():
            if isinstance(out, dict):
                out = {**out, "labels": out["labels"].masked_fill(pad, IGNORE_INDEX)}
            else:
                out = [dict(r, labels=torch.tensor(IGNORE_INDEX)) if p else r
                       for r, p in zip(out, pad.tolist(), strict=True)]
        return out


def token_lengths(dataset: Any) -> list[int]:
    """Tokens per example of a tokenized split (input_ids), or None-free zeros for features."""
    if "input_ids" not in getattr(dataset, "column_names", ()):
        return [0] * len(dataset)
    return [len(ids) for ids in dataset.with_format(None)["input_ids"]]


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Padded tokens over real tokens when each batch pads to its longest row."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return padded / max(1, real)
