"""Sentence pairs: `text_column=first,second` encodes both texts as the tokenizer pairs them, in
local files, dataset folders and hub tasks (`glue:mrpc` names its own columns); every method
trains on a pair file, and its record carries F1 and Matthews correlation."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from experiments.contract import record as R
from experiments.harness.config import UserError, resolve
from experiments.harness.runtime import tokenize
from experiments.inputs.backbones import load_tokenizer, minilm_path
from experiments.inputs.data import load_data
from experiments.train import run
from methods import METHODS

_WORDS = ("film", "plot", "actor", "scene", "music", "story", "ending", "cast", "script", "shot")
_SAME = {"good": "fine", "bad": "poor", "long": "lengthy", "funny": "amusing", "dull": "boring"}


def _pairs(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Paraphrase pairs: label 1 when the second sentence says the first with synonyms."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        noun, adj = rng.choice(_WORDS), rng.choice(list(_SAME))
        first = f"the {noun} was {adj} number {i}"
        if i % 2:
            second, label = f"number {i}: a {_SAME[adj]} {noun}", "paraphrase"
        else:
            other = rng.choice([w for w in _WORDS if w != noun])
            second, label = f"the {other} sounded {rng.choice(list(_SAME.values()))}", "different"
        rows.append({"sentence1": first, "sentence2": second, "label": label})
    return pd.DataFrame(rows)


@pytest.fixture
def pair_csv(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.csv"
    _pairs().to_csv(path, index=False)
    return path


def test_a_pair_file_keeps_both_texts_and_tokenizes_them_as_a_pair(pair_csv: Path) -> None:
    cfg = resolve(["method=head", f"data={pair_csv}", "text_column=sentence1,sentence2"])
    bundle = load_data(cfg)
    train = bundle.splits["train"]
    assert set(train.column_names) == {"text", "text_pair", "label"}
    assert bundle.label_names == ["different", "paraphrase"]
    tok = load_tokenizer(minilm_path())
    row = train[0]
    encoded = tokenize(bundle.splits, tok, 64)["train"][0]
    want = tok(row["text"], row["text_pair"], truncation=True, max_length=64)
    assert encoded["input_ids"].tolist() == want["input_ids"]
    assert set(encoded["token_type_ids"].tolist()) == {0, 1}  # BERT's segment ids


def test_a_dataset_folder_takes_pairs_too(tmp_path: Path) -> None:
    folder = tmp_path / "paired"
    folder.mkdir()
    frame = _pairs(150)
    for name, part in (("train", frame[:100]), ("validation", frame[100:125]),
                       ("test", frame[125:])):
        part.to_csv(folder / f"{name}.csv", index=False)
    bundle = load_data(resolve(["method=head", f"data={folder}",
                                "text_column=sentence1,sentence2"]))
    assert len(bundle.splits["test"]) == 25 and "text_pair" in bundle.splits["test"].column_names


def test_glue_pair_tasks_name_their_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    frame = _pairs(150).assign(label=lambda f: (f["label"] == "paraphrase").astype(int),
                               idx=range(150))
    parts = {"train": frame[:100], "validation": frame[100:125], "test": frame[125:]}
    seen = []

    def fake(path: str, name: str | None = None, **kw: object) -> datasets.DatasetDict:
        seen.append((path, name))
        return datasets.DatasetDict({k: datasets.Dataset.from_pandas(v, preserve_index=False)
                                     for k, v in parts.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    bundle = load_data(resolve(["method=head", "data=glue:mrpc"]))
    assert seen == [("glue", "mrpc")] and bundle.info["text_columns"] == ["sentence1",
                                                                          "sentence2"]
    assert bundle.splits["train"][0]["text_pair"] == parts["train"].iloc[0]["sentence2"]


@pytest.mark.parametrize("spec", ["a,b,c", "sentence1,", ","])
def test_a_bad_pair_spec_is_one_line(pair_csv: Path, spec: str) -> None:
    with pytest.raises(UserError, match="sentence1,sentence2"):
        load_data(resolve(["method=head", f"data={pair_csv}", f"text_column={spec}"]))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_pairs_with_f1_and_mcc(pair_csv: Path, runs_dir: Path,
                                                     method: str) -> None:
    record = run(resolve([f"method={method}", "model=tiny-bert", f"data={pair_csv}",
                          "text_column=sentence1,sentence2", "batch_size=16", "max_steps=2",
                          "wandb=disabled", "progress=false", "save=none"]))
    metrics = record[R.METRICS]
    assert record[R.STATUS] == R.FINISHED
    for key in (R.TEST_F1, R.TEST_MCC, R.VAL_F1, R.VAL_MCC, R.TEST_MACRO_F1, R.VAL_MACRO_F1):
        assert -1.0 <= metrics[key] <= 1.0, key


def test_predict_takes_a_pair_as_first_tab_second(pair_csv: Path, runs_dir: Path) -> None:
    """`make predict` on a pair run: each text is `first<TAB>second`, and the rebuilt model
    gives the run's test probabilities; a text without the tab is one clear error."""
    import numpy as np
    import torch

    from experiments.harness import artifacts
    from experiments.tools.predict import predict_probs

    record = run(resolve(["method=lora", "model=tiny-bert", f"data={pair_csv}",
                          "text_column=sentence1,sentence2", "batch_size=16", "max_steps=2",
                          "precision=fp32", "wandb=disabled", "progress=false"]))
    run_dir = Path(record[R.RECORD_PATH]).parent
    model, tok, manifest = artifacts.load_model(run_dir / R.MODEL_DIR)
    cfg = artifacts.run_config(manifest)
    test = load_data(cfg).splits["test"]
    texts = [f"{a}\t{b}" for a, b in zip(test["text"], test["text_pair"], strict=True)]
    probs = predict_probs(model, tok, texts, cfg, torch.device("cpu"))
    saved = pd.read_parquet(run_dir / R.PREDICTIONS_FILE)
    cols = [c for c in saved.columns if c.startswith(R.PRED_PROB_PREFIX)]
    np.testing.assert_allclose(probs, saved[cols].to_numpy(), rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="first<TAB>second"):
        predict_probs(model, tok, ["no tab here"], cfg, torch.device("cpu"))
