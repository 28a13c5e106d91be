"""Hub datasets as people name them (`glue:sst2`), splits without labels, duplicates in files.

Offline: a local folder laid out as the hub's GLUE repository is (a README naming the config,
parquet files per split, a ClassLabel feature, a test split of -1 labels) loads through the same
`datasets.load_dataset` call as a hub name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from experiments.contract import record as R
from experiments.harness.config import UserError, resolve
from experiments.inputs.data import hub_name, load_data
from experiments.train import run

README = """---
configs:
- config_name: sst2
  data_files:
  - split: train
    path: sst2/train-*
  - split: validation
    path: sst2/validation-*
  - split: test
    path: sst2/test-*
---
"""


def _glue_like(root: Path, train_labels: list[int] | None = None) -> Path:
    """A GLUE-style dataset folder: config sst2; train 100, validation 30, test 30 unlabelled."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"sentence": Value("string"),
                         "label": ClassLabel(names=["negative", "positive"]),
                         "idx": Value("int32")})

    def split(name: str, n: int, labels: list[int]) -> None:
        rows = {"sentence": [f"{name} sentence {i} {'good' if i % 2 else 'bad'}" for i in range(n)],
                "label": labels, "idx": list(range(n))}
        (root / "sst2").mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(rows, features=features).to_parquet(
            root / "sst2" / f"{name}-00000-of-00001.parquet")

    split("train", 100, train_labels or [i % 2 for i in range(100)])
    split("validation", 30, [i % 2 for i in range(30)])
    split("test", 30, [-1] * 30)
    (root / "README.md").write_text(README)
    return root


def test_hub_names_carry_a_config() -> None:
    assert hub_name("glue:sst2") == ("glue", "sst2")
    assert hub_name("nyu-mll/glue:sst2") == ("nyu-mll/glue", "sst2")
    assert hub_name("imdb") == ("imdb", None)
    assert hub_name("/data/glue:sst2") == ("/data/glue", "sst2")


def test_a_hub_name_reaches_load_dataset_as_dataset_and_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def offline(path: str, name: str | None = None, **kw: object) -> None:
        calls.append((path, name))
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as err:
        load_data(resolve(["method=head", "data=glue:sst2", "text_column=sentence"]))
    assert calls == [("glue", "sst2")]
    assert "\n" not in str(err.value) and "Couldn't reach 'glue'" in str(err.value)


def test_an_unlabelled_test_split_is_never_evaluated_on(tmp_path: Path) -> None:
    folder = _glue_like(tmp_path / "glue")
    bundle = load_data(resolve(["method=head", f"data={folder}:sst2", "text_column=sentence",
                                "batch_size=8"]))
    s = bundle.splits
    assert bundle.label_names == ["negative", "positive"]
    assert bundle.info[R.D_SPLIT] == ("test=hub validation (hub test unlabelled); "
                                      "validation=10% of hub train, stratified, seed 1234")
    assert bundle.info[R.D_UNLABELLED_SPLITS] == ["test"]
    assert all(t.startswith("validation ") for t in s["test"]["text"]) and len(s["test"]) == 30
    assert all(t.startswith("train ") for t in s["validation"]["text"])
    assert (len(s["train"]), len(s["validation"])) == (90, 10)
    assert not set(s["train"]["text"]) & set(s["validation"]["text"])
    assert sorted(s["validation"]["label"]) == [0] * 5 + [1] * 5  # stratified
    assert min(min(s[k]["label"]) for k in s) == 0  # no -1 anywhere


def test_a_glue_like_folder_trains_and_tests_on_the_labelled_split(tmp_path: Path) -> None:
    folder = _glue_like(tmp_path / "glue")
    rec = run(resolve(["method=head", "model=tiny-bert", f"data={folder}:sst2",
                       "text_column=sentence", "batch_size=16", "max_steps=2", "save=none",
                       "wandb=disabled", "progress=false"]))
    assert rec[R.STATUS] == R.FINISHED and rec[R.METRICS][R.TEST_N] == 30
    assert rec[R.DATA][R.D_SPLIT].startswith("test=hub validation (hub test unlabelled)")
    assert rec[R.DATA]["source"] == f"hub dataset {folder}, config sst2"


def test_rows_without_a_label_are_dropped_and_counted(tmp_path: Path) -> None:
    labels = [i % 2 for i in range(100)]
    labels[:4] = [-1] * 4
    folder = _glue_like(tmp_path / "glue", labels)
    bundle = load_data(resolve(["method=head", f"data={folder}:sst2", "text_column=sentence",
                                "batch_size=8"]))
    assert bundle.info[R.D_UNLABELLED_DROPPED] == 4
    assert len(bundle.splits["train"]) + len(bundle.splits["validation"]) == 96


def test_a_wrong_config_is_one_line(tmp_path: Path) -> None:
    folder = _glue_like(tmp_path / "glue")
    with pytest.raises(UserError, match="BuilderConfig 'cola' not found") as err:
        load_data(resolve(["method=head", f"data={folder}:cola", "text_column=sentence"]))
    assert "\n" not in str(err.value)


def test_local_files_drop_exact_duplicates_before_splitting(tmp_path: Path) -> None:
    texts = [f"review {i}" for i in range(100)] + [f"review {i}" for i in range(20)]
    df = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(120)]})
    df.to_csv(tmp_path / "d.csv", index=False)
    bundle = load_data(resolve(["method=head", f"data={tmp_path / 'd.csv'}", "batch_size=8"]))
    assert bundle.info[R.D_DUPLICATES_DROPPED] == 20
    seen = [t for k in bundle.splits for t in bundle.splits[k]["text"]]
    assert len(seen) == len(set(seen)) == 100
