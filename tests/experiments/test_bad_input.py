"""Bad input is caught before anything loads or is written: one line `error: ...`, exit code 2,
nothing under the runs folder. Lengths against the backbone's positions, model folders that are
not supported text models, every numeric key's range, a hub that cannot be reached."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from experiments.harness.config import RANGES, Config, UserError, resolve

REPO = Path(__file__).resolve().parents[2]
SMALL = ["train_size=64", "eval_size=32", "max_steps=2", "progress=false", "wandb=disabled"]


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Model folders the harness must refuse: empty, a tokenizer only, a config without
    weights, a vision model, an encoder-decoder."""
    from transformers import BertConfig, T5Config, ViTConfig

    from experiments.inputs.backbones import load_tokenizer, minilm_path

    root = tmp_path_factory.mktemp("models")
    out = {k: str(root / k) for k in ("empty", "tokenizer", "no-weights", "vit", "t5")}
    Path(out["empty"]).mkdir()
    load_tokenizer(minilm_path()).save_pretrained(out["tokenizer"])
    BertConfig().save_pretrained(out["no-weights"])
    ViTConfig().save_pretrained(out["vit"])
    T5Config().save_pretrained(out["t5"])
    return out


def _main_one_line(args: list[str], capsys: pytest.CaptureFixture[str], runs_dir: Path) -> str:
    """Run the harness's entry in-process: exit 2, one `error:` line, nothing written."""
    import experiments.train as train

    assert train.main(args) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    return lines[0]


@pytest.mark.parametrize(("args", "needle"), [
    (["method=full", "max_length=600"], "max_length = 600 exceeds the 512 positions"),
    (["method=soft_prompt", "max_length=500"], "prompt_length + max_length (20 + 500) = 520"),
    (["method=prefix", "prefix.prefix_length=600"], "prefix.prefix_length"),
    (["method=full", "model=tiny-roberta", "max_length=514"], "513 positions"),
])
def test_lengths_beyond_the_backbones_positions(args: list[str], needle: str,
                                                capsys: pytest.CaptureFixture[str],
                                                runs_dir: Path) -> None:
    line = _main_one_line(["model=tiny-bert", *args, *SMALL], capsys, runs_dir)
    assert needle in line


@pytest.mark.parametrize(("kind", "needle"), [
    ("empty", "has no config.json"), ("tokenizer", "has no config.json"),
    ("no-weights", "no weights"), ("vit", "not a text encoder or decoder"),
    ("t5", "is an encoder-decoder"),
])
def test_model_folders_that_are_not_supported_text_models(
        kind: str, needle: str, folders: dict[str, str], capsys: pytest.CaptureFixture[str],
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import experiments.train as train

    monkeypatch.setattr(train, "load_data", lambda cfg: pytest.fail("data loaded first"))
    line = _main_one_line(["method=head", f"model={folders[kind]}", *SMALL], capsys, runs_dir)
    assert needle in line


def _numeric_fields() -> list[str]:
    hints = typing.get_type_hints(Config)
    return [f.name for f in dataclasses.fields(Config) if hints[f.name] in (int, float)]


def test_every_numeric_key_has_a_range() -> None:
    assert sorted(_numeric_fields()) == sorted(RANGES)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_numeric_key_refuses_values_out_of_range(key: str) -> None:
    low, high, high_ok = RANGES[key]
    bad = [low - 1, float("inf"), float("nan")] + ([high + 1] if high_ok else [high] if
                                                   high != float("inf") else [])
    if key == "lr":
        bad.append(0)
    for value in bad:
        raw = str(int(value)) if isinstance(value, int) or float(value).is_integer() else \
            str(value)
        with pytest.raises(UserError, match=rf"^{key}="):
            resolve(["method=full", f"{key}={raw}"])


@pytest.mark.parametrize("args", [["seed=-1"], ["lr=inf"], ["max_grad_norm=-1"],
                                  ["weight_decay=-5"], ["batch_size=-1"]])
def test_the_issues_out_of_range_values_exit_2(args: list[str],
                                                capsys: pytest.CaptureFixture[str],
                                                runs_dir: Path) -> None:
    line = _main_one_line(["method=head", "model=tiny-bert", *SMALL, *args], capsys, runs_dir)
    assert args[0].split("=")[0] in line


def test_a_leaked_dataset_exits_2_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], runs_dir: Path) -> None:
    import pandas as pd

    (tmp_path / "leak").mkdir()
    pd.DataFrame({"text": [f"t {i}" for i in range(100)], "label": [i % 2 for i in range(100)]}
                 ).to_csv(tmp_path / "leak" / "train.csv", index=False)
    pd.DataFrame({"text": [f"t {i}" for i in range(0, 100, 4)], "label": [0, 0] * 12 + [0]}
                 ).to_csv(tmp_path / "leak" / "test.csv", index=False)
    line = _main_one_line(["method=head", "model=tiny-bert", f"data={tmp_path / 'leak'}",
                           *SMALL], capsys, runs_dir)
    assert "every example of the test split" in line


def _offline_run(args: list[str], tmp_path: Path, **env: str) -> tuple[str, float]:
    """The harness in a fresh process against a hub that cannot be reached (a closed local
    port) and an empty cache; returns (its one error line, seconds)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    full_env.update({"PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"),
                     "HF_ENDPOINT": "http://127.0.0.1:9", **env})
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "experiments.train", "method=head", *SMALL,
                          *args], env=full_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    took = time.perf_counter() - t
    lines = [x for x in res.stderr.splitlines() if x.startswith("error")]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    return lines[0], took


@pytest.mark.parametrize("offline_env", [{}, {"HF_HUB_OFFLINE": "1"}])
def test_an_unreachable_hub_fails_fast_and_says_offline(offline_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    line, took = _offline_run(["model=tunebench-test/no-such-model"], tmp_path, **offline_env)
    assert "offline" in line and took < 25  # huggingface_hub alone retried for 26-49 s
    line, took = _offline_run(["model=tiny-bert", "data=glue:sst2"], tmp_path, **offline_env)
    assert "offline" in line and took < 25
    assert line.count("glue:sst2") == 1  # named as what failed, never suggested
