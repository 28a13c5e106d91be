"""Loading records (and W&B runs) into one DataFrame, skipping bad files, and seed statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import configs, results
from experiments.contract import record as R


def test_records_load_as_one_flat_row_per_run(real_runs: Path) -> None:
    df = results.load_records(real_runs)
    assert len(df) == 4
    for col in ("run_id", "method", "config_hash", "status", results.ACCURACY, results.VAL_BEST,
                results.TRAINABLE, results.TOTAL, results.MEASURED, results.TRAIN_S,
                results.SEED, results.GIT_COMMIT):
        assert col in df, col
    # The measured step's breakdown flattens to one column per category.
    assert f"{results.MEASURED_AT_PEAK}.{R.CAT_ACTIVATIONS}" in df
    assert set(df["method"]) == {"head", "full"}
    assert (df["status"] == "finished").all()
    assert df["metrics.test/accuracy"].between(0, 1).all()
    # Lists stay whole: the validation curve of each run is there for the curve plot.
    assert all(isinstance(h, list) and h[0]["step"] == 2 for h in df["val_history"])
    head = df[df["method"] == "head"].iloc[0]
    assert head["params.trainable"] == head["params.head"] < head["params.total"]


def test_runs_dir_defaults_to_env(real_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNS_DIR", str(real_runs))
    assert len(results.load()) == 4


BAD_FILES = {
    "truncated": None,  # filled from a real record below: the first half of its bytes
    "garbage": b"this is not json {",
    "wrong_schema": json.dumps({"schema": 99, "run_id": "x", "method": "lora",
                                "config_hash": "abc"}).encode(),
    "no_schema": json.dumps({"run_id": "y", "method": "lora", "config_hash": "abc"}).encode(),
    "not_an_object": b"[1, 2, 3]",
    "no_run_id": json.dumps({"schema": 1, "method": "lora", "config_hash": "abc"}).encode(),
    "binary": b"\xff\xfe\x00\x81",
    "empty": b"",
}


def test_bad_records_are_skipped_with_one_warning_each(runs_copy: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    good = sorted(runs_copy.glob("*/record.json"))[0].read_bytes()
    for name, content in BAD_FILES.items():
        path = runs_copy / f"bad-{name}" / "record.json"
        path.parent.mkdir()
        path.write_bytes(good[: len(good) // 2] if content is None else content)
    (runs_copy / "no-record-yet").mkdir()  # a run still starting: no record, no warning

    df = results.load_records(runs_copy)

    assert len(df) == 4
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == len(BAD_FILES)
    for name in BAD_FILES:
        matching = [line for line in lines if f"bad-{name}" in line]
        assert len(matching) == 1 and matching[0].startswith("warning: skipping"), name
    assert any("schema 99" in line for line in lines)


def test_empty_or_missing_folder_gives_an_empty_frame(tmp_path: Path) -> None:
    assert results.load_records(tmp_path / "nowhere").empty
    empty = results.aggregate(results.finished(results.load_records(tmp_path)))
    assert empty.empty


@pytest.mark.parametrize(("confidence", "dof", "t"), [
    (0.95, 1, 12.7062), (0.95, 2, 4.3027), (0.95, 4, 2.7764), (0.95, 9, 2.2622),
    (0.95, 30, 2.0423), (0.90, 10, 1.8125), (0.99, 5, 4.0321),
])
def test_mean_ci_uses_the_t_table(confidence: float, dof: int, t: float) -> None:
    """The interval's half-width is t(dof) * s / sqrt(n), t as printed in a textbook table."""
    values = [float(i) for i in range(dof + 1)]
    s = results.mean_ci(values, confidence)
    assert s["ci"] / (s["std"] / math.sqrt(dof + 1)) == pytest.approx(t, abs=1e-4)


def test_number_reads_any_record_value() -> None:
    assert configs.number(3) == 3.0 and configs.number("2.5") == 2.5
    for missing in (None, float("nan"), pd.NA, "n/a", [1], {}):
        assert math.isnan(configs.number(missing)), missing


def test_mean_ci_on_known_numbers() -> None:
    s = results.mean_ci([1, 2, 3, 4, 5])
    assert s["mean"] == 3 and s["n"] == 5
    assert s["std"] == pytest.approx(math.sqrt(2.5))
    # t_{0.975, 4} * s / sqrt(n) = 2.776445 * 1.581139 / 2.236068
    assert s["ci"] == pytest.approx(1.963243, abs=1e-5)
    one = results.mean_ci([0.7, None, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["ci"])
    assert results.mean_ci([])["n"] == 0


def test_aggregate_groups_seeds_by_config_hash() -> None:
    df = pd.DataFrame({
        "run_id": ["a0", "a1", "a2", "b0"], "method": ["lora"] * 3 + ["full"],
        "config_hash": ["A", "A", "A", "B"], "status": ["finished"] * 4,
        "config.seed": [0, 1, 2, 0], "config.lora.rank": [8, 8, 8, None],
        "metrics.test/accuracy": [0.80, 0.82, 0.84, 0.9], "params.trainable": [10, 10, 10, 100],
    })
    agg = results.aggregate(df)
    assert list(agg["label"]) == ["lora", "full"]  # the design's method order
    a = agg.iloc[0]
    assert a["n"] == 3 and a["seeds"] == [0, 1, 2] and a["run_ids"] == ["a0", "a1", "a2"]
    assert a["metrics.test/accuracy"] == pytest.approx(0.82)
    assert a["metrics.test/accuracy.std"] == pytest.approx(0.02)
    assert a["metrics.test/accuracy.ci95"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3))
    assert a["params.trainable"] == 10
    assert math.isnan(agg.iloc[1]["metrics.test/accuracy.ci95"])


def test_aggregate_real_runs(real_runs: Path) -> None:
    df = results.load_records(real_runs)
    agg = results.aggregate(results.finished(df))
    assert list(agg["method"]) == ["head", "full"]
    assert (agg["n"] == 2).all() and all(s == [0, 1] for s in agg["seeds"])
    for _, row in agg.iterrows():
        runs = df[df["config_hash"] == row["config_hash"]]
        assert row["metrics.test/accuracy"] == pytest.approx(runs["metrics.test/accuracy"].mean())
        assert row["time.fit_s"] >= row["time.train_s"]


def test_old_process_memory_is_never_the_measured_peak() -> None:
    """CPU resident-set growth and CUDA max allocated go to their own columns, named so."""
    df = pd.DataFrame({
        "run_id": ["cpu", "cuda", "wandb", "new"], "method": ["lora"] * 4,
        "config_hash": ["a", "b", "c", "d"],
        results.PEAK: [9e6, 5e6, 7e6, None], results.DEVICE_PEAK: [9e6, 5e6, None, None],
        results.PEAK_METHOD: ["CPU resident-set growth over the baseline (approximate)",
                              "torch.cuda.max_memory_allocated over training (exact)", None, None],
        results.MEASURED: [None, None, None, 3e6], results.RSS_GROWTH: [None, None, None, 8e6],
    })
    out = results.with_derived(df)
    assert out[results.MEASURED].tolist()[3] == 3e6 and out[results.MEASURED][:3].isna().all()
    assert out[results.RSS_GROWTH].tolist()[::3] == [9e6, 8e6]
    assert out[results.CUDA_MAX].tolist()[1] == 5e6 and out[results.CUDA_MAX].isna().sum() == 3
    # An unlabelled process figure (a W&B summary) is not guessed into either column.
    assert math.isnan(out[results.RSS_GROWTH][2]) and math.isnan(out[results.CUDA_MAX][2])
    assert "memory.measured_bytes" not in out  # the old derived column that fell back to RSS


def test_failed_runs_are_loaded_but_not_aggregated(runs_copy: Path, make_record) -> None:  # noqa: ANN001
    make_record(runs_copy, "full", 5, 0.1, status="failed")
    df = results.load_records(runs_copy)
    assert len(df) == 5 and (df["status"] == "failed").sum() == 1
    assert len(results.finished(df)) == 4


def test_wandb_runs_load_into_the_same_columns(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture,
                                               fake_wandb_api) -> None:  # noqa: ANN001
    monkeypatch.setenv("WANDB_ENTITY", "ent")
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    api = fake_wandb_api
    df = results.load(source="wandb", api=api)
    assert api.paths == ["ent/proj"]
    assert list(df["run_id"]) == ["20260101-full-bb", "20260101-lora-aa"]
    assert "skipping W&B run 20260101-x-cc: no `method`" in capsys.readouterr().err
    lora = df[df["method"] == "lora"].iloc[0]
    assert lora["metrics.test/accuracy"] == 0.81 and lora["params.trainable"] == 1000
    assert lora[results.MEASURED] == 2**20 and lora[results.TRAIN_S] == 3.5
    assert lora[results.RSS_GROWTH] == 5 * 2**20
    assert lora["config.lora.rank"] == 8 and lora["config_hash"] == "h-lora"
    assert lora["experiment"] == "sweep" and lora["env.wandb.path"] == "ent/proj/20260101-lora-aa"
    assert lora["val_history"] == [{"step": 10, "accuracy": 0.7}, {"step": 20, "accuracy": 0.8}]
    assert "metrics._runtime" not in df and "metrics.confusion" not in df
    assert "config._wandb" not in df.columns
    assert df[df["method"] == "full"].iloc[0]["status"] == "failed"
    agg = results.aggregate(results.finished(df))
    assert list(agg["label"]) == ["lora"]


def test_wandb_project_defaults_and_broken_runs(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture,
                                                fake_wandb_api) -> None:  # noqa: ANN001
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)

    class Broken:
        id, name = "zz", "gone"

        @property
        def config(self) -> dict:
            raise RuntimeError("run was deleted")

    api = type(fake_wandb_api)([Broken()])
    assert results.load_wandb(api=api).empty
    assert api.paths == ["tunebench"]
    assert "skipping W&B run zz" in capsys.readouterr().err


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="records"):
        results.load(source="csv")


def test_a_duplicated_config_and_seed_counts_once_with_a_warning(
        runs_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same config and seed run twice is one replicate: the newer finished run counts,
    the other is named as a duplicate (in a warning and in summary.md), and n stays 2."""
    import shutil

    from analysis import plots

    original = sorted(runs_copy.glob("*full*/record.json"))[0]
    copy = runs_copy / f"{original.parent.name}-again"
    shutil.copytree(original.parent, copy)
    rec = json.loads((copy / "record.json").read_text())
    rec["run_id"] = copy.name
    rec["finished_at"] = "2099-01-01T00:00:00Z"
    (copy / "record.json").write_text(json.dumps(rec))

    df = results.load_records(runs_copy)
    err = capsys.readouterr().err
    assert f"warning: {original.parent.name} duplicates {copy.name}" in err
    assert len(df) == 5 and len(results.finished(df)) == 4
    assert list(results.duplicates(df)["run_id"]) == [original.parent.name]
    agg = results.aggregate(results.finished(df))
    assert agg.set_index("method").loc["full", "n"] == 2
    assert copy.name in agg.set_index("method").loc["full", "run_ids"]

    assert plots.main([str(runs_copy), "--reports-dir", str(tmp_path / "r")]) == 0
    assert "duplicates" in capsys.readouterr().err  # make plots warns
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "| full | 2 |" in summary
    assert f"Duplicate left out: {original.parent.name}" in summary
