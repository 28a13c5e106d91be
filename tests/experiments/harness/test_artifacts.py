"""What a run leaves behind: its saved model reloads to its recorded test predictions exactly,
for every method; the predictions file; `make predict`'s command and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.contract import record as R
from experiments.harness import artifacts
from experiments.harness.config import resolve
from experiments.inputs.data import load_data
from experiments.tools.predict import main as predict_main
from experiments.tools.predict import predict_probs
from experiments.train import run
from methods import METHODS


def _args(method: str, runs_dir: Path, *extra: str) -> list[str]:
    # lr 1e-2: a few steps move every method's weights away from their start, so a reload that
    # missed a tensor would show in the predictions
    return [f"method={method}", "model=tiny-bert", "train_size=64", "eval_size=24",
            "batch_size=16", "max_steps=3", "lr=1e-2", "wandb=disabled", "progress=false",
            f"runs_dir={runs_dir}", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One finished run of every registered method (tiny BERT, 3 steps), by method."""
    runs_dir = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TUNEBENCH_CPU_BF16", "0")  # precision=auto is fp32, as in every test
        return {method: run(resolve(_args(method, runs_dir))) for method in METHODS}


def _folder(record: dict[str, Any]) -> Path:
    return Path(record[R.RECORD_PATH]).parent


def _test_texts(record: dict[str, Any]) -> list[str]:
    """The run's test split, as the harness built it."""
    cfg = artifacts.run_config(artifacts.read_manifest(_folder(record) / R.MODEL_DIR))
    return list(load_data(cfg).splits["test"]["text"])


@pytest.mark.parametrize("method", list(METHODS))
def test_a_reloaded_model_gives_the_recorded_predictions(finished: dict, method: str) -> None:
    record = finished[method]
    folder = _folder(record)
    saved = pd.read_parquet(folder / R.PREDICTIONS_FILE)
    assert list(saved[R.PRED_EXAMPLE]) == list(range(record[R.METRICS][R.TEST_N]))
    assert (saved[R.PRED_PREDICTED] == saved[R.PRED_LABEL]).mean() == pytest.approx(
        record[R.METRICS][R.TEST_ACCURACY])
    model, tok, manifest = artifacts.load_model(folder / R.MODEL_DIR)
    assert manifest[artifacts.M_METHOD] == method
    assert manifest[artifacts.M_LABEL_NAMES] == record[R.DATA]["label_names"]
    texts = [_test_texts(record)[i] for i in saved[R.PRED_EXAMPLE]]
    probs = predict_probs(model, tok, texts, artifacts.run_config(manifest), torch.device("cpu"),
                          precision=manifest[artifacts.M_PRECISION])
    prob_cols = [c for c in saved.columns if c.startswith(R.PRED_PROB_PREFIX)]
    assert probs.shape == (len(saved), len(prob_cols)) == (24, 2)
    np.testing.assert_array_equal(probs.argmax(-1), saved[R.PRED_PREDICTED].to_numpy())
    np.testing.assert_allclose(probs, saved[prob_cols].to_numpy(), rtol=0, atol=1e-6)
    # the record lists every file it left, with its size
    files = record[R.ARTIFACTS][R.ARTIFACT_FILES]
    assert R.PREDICTIONS_FILE in files and f"{R.MODEL_DIR}/{R.MANIFEST_FILE}" in files
    for name, size in files.items():
        assert (folder / name).stat().st_size == size
    assert record[R.ARTIFACTS][R.ARTIFACT_TOTAL_BYTES] == sum(files.values())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_runs_save_a_folder_peft_loads(finished: dict, method: str) -> None:
    """`runs/<id>/model` is itself a PEFT folder: loaded onto the run's backbone with
    `peft.PeftModel.from_pretrained`, plus the saved head, it gives the run's predictions."""
    from helpers import load_peft_folder

    record = finished[method]
    folder = _folder(record) / R.MODEL_DIR
    assert record[R.ARTIFACTS][R.ARTIFACT_FORMATS]["peft"] == f"{R.MODEL_DIR}/."
    base, tok, manifest = artifacts.base_model(folder)
    model = load_peft_folder(base, folder).eval()
    saved = pd.read_parquet(_folder(record) / R.PREDICTIONS_FILE)
    texts = _test_texts(record)
    probs = predict_probs(model, tok, texts, artifacts.run_config(manifest), torch.device("cpu"))
    np.testing.assert_allclose(probs[:, 1], saved[f"{R.PRED_PROB_PREFIX}1"], atol=1e-5)


def test_full_fine_tuning_saves_what_transformers_loads(finished: dict) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = _folder(finished["full"]) / R.MODEL_DIR
    backbone = AutoModel.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder) is not None
    model, _, _ = artifacts.load_model(folder)
    for name, p in backbone.named_parameters():
        if not name.startswith("pooler."):  # our head pools itself; the pooler was dropped
            assert torch.equal(p, model.backbone.get_parameter(name)), name


def test_generic_save_keeps_every_trained_tensor(finished: dict) -> None:
    """Methods without a save hook: every trainable or added tensor and the head, by name."""
    from safetensors.torch import load_file

    record = finished["soft_prompt"]
    keys = set(load_file(str(_folder(record) / R.MODEL_DIR / artifacts.TRAINED_FILE)))
    assert keys == {"soft_prompt.weight", "classifier.weight", "classifier.bias"}


def test_predict_prints_a_label_and_probability_per_text(finished: dict, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    folder = _folder(finished["lora"])
    lines = tmp_path / "texts.txt"
    lines.write_text("a gorgeous, moving film\n\nthe worst movie of the year\n")
    assert predict_main([str(folder), "--text", "fine", "--file", str(lines)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    names = finished["lora"][R.DATA]["label_names"]
    for line, text in zip(out, ["fine", "a gorgeous, moving film", "the worst movie of the year"],
                          strict=True):
        label, prob, echoed = line.split("\t")
        assert label in names and 0.5 <= float(prob) <= 1 and echoed == text


@pytest.mark.parametrize(("argv", "needle"), [
    (["nosuchrun", "--text", "x"], "no run 'nosuchrun'"),
    (["{run}"], "nothing to classify"),
    (["{run}", "--file", "{empty}"], "has no text"),
    (["{run}", "--file", "{missing}"], "not found"),
    (["{run}", "--text", "x", "colour=red"], "unknown option 'colour'"),
    (["", "--text", "x"], "no run given"),
])
def test_predict_bad_input_is_one_line_exit_2(finished: dict, tmp_path: Path, argv: list[str],
                                              needle: str, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    names = {"run": str(_folder(finished["head"])), "empty": str(empty),
             "missing": str(tmp_path / "nope.txt")}
    assert predict_main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


@pytest.mark.parametrize("method", ["head", "lora"])
def test_predict_computes_in_the_runs_precision(runs_dir: Path, method: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """precision=auto resolves per machine (bf16 where a CPU has it natively): a bf16 run is
    reproduced in bf16 wherever it is reloaded."""
    monkeypatch.setenv("TUNEBENCH_CPU_BF16", "1")
    record = run(resolve(_args(method, runs_dir)))
    monkeypatch.setenv("TUNEBENCH_CPU_BF16", "0")  # here auto would mean fp32
    folder = _folder(record) / R.MODEL_DIR
    model, tok, manifest = artifacts.load_model(folder)
    assert manifest[artifacts.M_PRECISION] == record[R.PRECISION] == "bf16-mixed"
    probs = predict_probs(model, tok, _test_texts(record), artifacts.run_config(manifest),
                          torch.device("cpu"), precision=manifest[artifacts.M_PRECISION])
    saved = pd.read_parquet(_folder(record) / R.PREDICTIONS_FILE)
    np.testing.assert_allclose(probs[:, 1], saved[f"{R.PRED_PROB_PREFIX}1"], rtol=0, atol=1e-6)


def test_save_none_leaves_predictions_but_no_model(runs_dir: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    record = run(resolve(_args("head", runs_dir, "save=none")))
    folder = _folder(record)
    assert (folder / R.PREDICTIONS_FILE).is_file() and not (folder / R.MODEL_DIR).exists()
    assert list(record[R.ARTIFACTS][R.ARTIFACT_FILES]) == [R.PREDICTIONS_FILE]
    assert predict_main([record[R.RUN_ID], "--text", "x"]) == 2  # found by id in $RUNS_DIR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no saved model" in err[0] and "finished" in err[0]
    assert json.loads((folder / R.RECORD_FILE).read_text())[R.CONFIG][R.C_SAVE] == "none"
