"""Examples shared between splits: counted for the record, and refused when a whole split is
inside another (its scores would measure memory, not generalisation).

An example is compared as its input columns (text, and a pair's second text) as the loader gives
them, stripped of surrounding whitespace; the label is not part of it.
"""

from __future__ import annotations

import itertools
from typing import Any

from experiments.harness.config import UserError


def _texts(ds: Any) -> set[str]:
    """A split's examples as comparable strings: every input column (not the label), stripped."""
    names = ds.column_names if hasattr(ds, "column_names") else list(ds.columns)  # or a frame
    cols = [c for c in names if c != "label"]
    columns = [ds[c] for c in cols]
    return {"\x1f".join(str(v).strip() for v in row) for row in zip(*columns, strict=True)}


def shared_between_splits(splits: Any) -> dict[str, int]:
    """How many distinct examples each pair of splits has in common ("train&test": n)."""
    texts = {k: _texts(splits[k]) for k in splits}
    return {f"{a}&{b}": len(texts[a] & texts[b])
            for a, b in itertools.combinations(list(splits), 2)}


def refuse_contained_splits(splits: Any, name: str) -> None:
    """UserError when every example of a split is also in another: scores on it would measure
    memory, not generalisation."""
    texts = {k: _texts(splits[k]) for k in splits}
    for a, b in itertools.permutations(list(splits), 2):
        if texts[a] and texts[a] <= texts[b]:
            raise UserError(f"{name}: every example of the {a} split ({len(texts[a])}) is also in "
                            f"the {b} split; use a dataset whose splits are disjoint")
