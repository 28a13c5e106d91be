"""One rule per kind of bad data, the same for every loader: a local file and a dataset folder
(which goes through `datasets.load_dataset`, as a hub name does)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from experiments.contract import record as R
from experiments.harness.config import UserError, resolve
from experiments.inputs.data import load_data


def _write(rows: list[tuple[object, object]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)


def _as_file_and_folder(rows: list[tuple[object, object]], tmp_path: Path) -> list[str]:
    """The same rows as one CSV file and as a folder's train.csv (validation and test carved)."""
    _write(rows, tmp_path / "data.csv")
    _write(rows, tmp_path / "folder" / "train.csv")
    return [str(tmp_path / "data.csv"), str(tmp_path / "folder")]


def _load(data: str) -> object:
    return load_data(resolve(["method=head", f"data={data}", "batch_size=4"]))


def test_label_spellings_are_one_class_in_every_loader(tmp_path: Path) -> None:
    spellings = ["neg", " neg", "NEG", "pos", "pos ", "POS"]
    rows = [(f"review {i}", spellings[i % 6]) for i in range(240)]
    for data in _as_file_and_folder(rows, tmp_path):
        bundle = _load(data)
        assert bundle.label_names == ["neg", "pos"], data  # 2 classes, not 6
        assert bundle.info[R.D_LABELS_NORMALISED] == 160  # the 4 of 6 spellings not canonical
        assert sorted(bundle.info[R.D_LABEL_SPELLINGS]) == ["neg", "pos"]


def test_missing_labels_are_unlabelled_in_every_loader(tmp_path: Path) -> None:
    # -1, null and blank all mean "no label" (as GLUE's hidden test labels): dropped and counted,
    # never a class of their own.
    labels: list[object] = [0, 1, -1, None, "", 1, 0, 1]
    rows = [(f"text {i}", labels[i % 8]) for i in range(240)]
    for data in _as_file_and_folder(rows, tmp_path):
        bundle = _load(data)
        assert bundle.num_labels == 2 and bundle.label_names == ["0", "1"], data
        assert bundle.info[R.D_UNLABELLED_DROPPED] == 90
        assert sum(bundle.info[f"{k}_rows"] for k in ("train", "validation", "test")) == 150


def test_rows_without_text_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [("" if i % 3 == 0 else (None if i % 3 == 1 and i < 3 else f"t {i}"), i % 2)
            for i in range(200)]
    for data in _as_file_and_folder(rows, tmp_path):
        bundle = _load(data)
        assert bundle.info[R.D_TEXT_DROPPED] == 68, data  # 67 blank + 1 null


def test_a_split_contained_in_another_is_refused(tmp_path: Path) -> None:
    _write([(f"t {i}", i % 2) for i in range(100)], tmp_path / "leak" / "train.csv")
    _write([(f"t {i}", i % 2) for i in range(0, 100, 5)], tmp_path / "leak" / "test.csv")
    with pytest.raises(UserError, match="every example of the test split .* also in the train"):
        _load(str(tmp_path / "leak"))


def test_examples_shared_between_splits_are_counted_and_warned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write([(f"t {i}", i % 2) for i in range(100)], tmp_path / "some" / "train.csv")
    _write([(f" t {i}", i % 2) for i in range(90, 130)], tmp_path / "some" / "test.csv")
    bundle = _load(str(tmp_path / "some"))
    # The text as the loader gives it, stripped: " t 95" is train's "t 95".
    assert bundle.info[R.D_SHARED]["train&test"] + bundle.info[R.D_SHARED][
        "validation&test"] == 10
    assert "warning:" in capsys.readouterr().err


def test_clean_data_records_zero_counts(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _write([(f"t {i}", ["a", "b"][i % 2]) for i in range(100)], tmp_path / "ok.csv")
    bundle = _load(str(tmp_path / "ok.csv"))
    assert bundle.info[R.D_TEXT_DROPPED] == 0 and R.D_LABELS_NORMALISED not in bundle.info
    assert set(bundle.info[R.D_SHARED].values()) == {0}
    assert "warning" not in capsys.readouterr().err
