"""Data sources: embedded rotten_tomatoes and newsgroups20, local files, hub names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from experiments.contract import record as R
from experiments.harness.config import UserError, resolve
from experiments.inputs.data import (
    load_data,
    load_newsgroups20,
    load_rotten_tomatoes,
    stratified_split,
)


def test_rotten_tomatoes_split_is_fixed_and_stratified() -> None:
    a, b = load_rotten_tomatoes(), load_rotten_tomatoes()
    sizes = {k: len(a.splits[k]) for k in a.splits}
    total = sum(sizes.values())
    assert 12_700 < total <= 12_808  # fresh + rotten, exact duplicates dropped
    assert abs(sizes["train"] / total - 0.8) < 0.01
    assert a.splits["test"]["text"][:50] == b.splits["test"]["text"][:50]
    assert a.label_names == ["rotten", "fresh"]
    train_pos = sum(a.splits["train"]["label"]) / sizes["train"]
    test_pos = sum(a.splits["test"]["label"]) / sizes["test"]
    assert abs(train_pos - test_pos) < 0.01  # stratified
    assert not set(a.splits["train"]["text"]) & set(a.splits["test"]["text"])


def test_newsgroups20_official_split() -> None:
    b = load_newsgroups20()
    assert b.num_labels == 20
    assert len(b.splits["test"]) == 7529 or len(b.splits["test"]) > 7000
    assert len(b.splits["train"]) + len(b.splits["validation"]) > 11_000


def test_subsample_is_deterministic() -> None:
    cfg = resolve(["method=full", "train_size=100", "eval_size=40"])
    a, b = load_data(cfg), load_data(cfg)
    assert len(a.splits["train"]) == 100 and len(a.splits["test"]) == 40
    assert a.splits["train"]["text"] == b.splits["train"]["text"]
    # the record says both what was used and what the split held before subsampling
    assert (a.info["train_rows"], a.info["test_rows"]) == (100, 40)
    whole = a.info[R.D_SPLIT_ROWS]
    assert whole["train"] > 10_000 and whole["test"] > 1_000


def _write(tmp_path: Path, name: str, df: pd.DataFrame) -> str:
    path = tmp_path / name
    if name.endswith(".csv"):
        df.to_csv(path, index=False)
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return str(path)


def _frame(n: int = 120) -> pd.DataFrame:
    return pd.DataFrame({"review": [f"text number {i}" for i in range(n)],
                         "stars": ["good" if i % 3 else "bad" for i in range(n)]})


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl", "d.parquet"])
def test_local_files_with_named_columns_and_string_labels(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, _frame())
    cfg = resolve(["method=full", f"data={path}", "text_column=review", "label_column=stars"])
    b = load_data(cfg)
    assert b.label_names == ["bad", "good"] and b.info["label_order"] == ["bad", "good"]
    assert sum(len(b.splits[k]) for k in b.splits) == 120
    assert set(b.splits["train"].column_names) == {"text", "label"}


def test_local_file_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", _frame())
    with pytest.raises(UserError, match="columns found: review, stars"):
        load_data(resolve(["method=full", f"data={path}"]))
    with pytest.raises(UserError, match="not found"):
        load_data(resolve(["method=full", f"data={tmp_path / 'missing.csv'}"]))
    one = _write(tmp_path, "one.csv", pd.DataFrame({"text": ["a"] * 60, "label": [1] * 60}))
    with pytest.raises(UserError, match="fewer than 2 classes"):
        load_data(resolve(["method=full", f"data={one}"]))
    with pytest.raises(UserError, match="fewer than batch_size"):
        load_data(resolve(["method=full", f"data={path}", "text_column=review",
                           "label_column=stars", "batch_size=500"]))


def test_hub_path_loads_through_load_dataset(tmp_path: Path) -> None:
    """The hub code path, fed a local dataset folder (load_dataset accepts both)."""
    folder = tmp_path / "hubby"
    folder.mkdir()
    df = pd.DataFrame({"text": [f"t{i}" for i in range(90)], "label": [i % 2 for i in range(90)]})
    df.iloc[:70].to_csv(folder / "train.csv", index=False)
    df.iloc[70:].to_csv(folder / "test.csv", index=False)
    b = load_data(resolve(["method=full", f"data={folder}", "batch_size=8"]))
    assert set(b.splits) == {"train", "validation", "test"}
    assert len(b.splits["test"]) == 20 and b.info["source"].startswith("hub dataset")


def test_stratified_split_covers_everything_once() -> None:
    labels = pd.Series([0] * 50 + [1] * 30).to_numpy()
    parts = stratified_split(labels, (0.8, 0.1, 0.1))
    flat = sorted(i for p in parts for i in p.tolist())
    assert flat == list(range(80))
