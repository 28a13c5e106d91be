"""A run's model folder loads with transformers and PEFT alone, in a fresh process that does not
import tunebench, and gives the run's recorded test probabilities: the native head through
PEFT's and transformers' auto classes, the shared head through the model card's own lines."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from experiments.contract import record as R
from experiments.harness import artifacts
from experiments.harness.config import resolve
from experiments.inputs.data import load_data
from experiments.train import run
from methods import METHODS

# Refuses to go on if tunebench's packages were imported: the folder must stand on its own.
_GUARD = ("import sys\nassert not {'experiments', 'methods'} & {m.split('.')[0] for m in "
          "sys.modules}, 'tunebench imported'\n")


def _train(method: str, model: str, runs_dir: Path, *extra: str) -> dict[str, Any]:
    args = [f"method={method}", f"model={model}", "train_size=64", "eval_size=24",
            "batch_size=16", "max_steps=3", "lr=1e-2", "precision=fp32", "wandb=disabled",
            "progress=false", f"runs_dir={runs_dir}", *extra]
    return run(resolve(args))


def _card_code(folder: Path, texts: list[str]) -> str:
    """The model card's Python block, on the given texts."""
    card = (folder / artifacts.CARD_FILE).read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code, n = re.subn(r"^texts = .*$", lambda _: f"texts = {json.dumps(texts)}", code,
                      flags=re.M)
    assert n == 1
    return _GUARD + code


def _fresh_probs(folder: Path, code: str) -> np.ndarray:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]))


def _check(record: dict[str, Any], code_for: Any = None) -> Path:
    run_dir = Path(record[R.RECORD_PATH]).parent
    folder = run_dir / R.MODEL_DIR
    saved = pd.read_parquet(run_dir / R.PREDICTIONS_FILE)
    cfg = artifacts.run_config(artifacts.read_manifest(folder))
    texts = list(load_data(cfg).splits["test"]["text"])
    texts = [texts[i] for i in saved[R.PRED_EXAMPLE]]
    probs = _fresh_probs(folder, (code_for or _card_code)(folder, texts))
    cols = [c for c in saved.columns if c.startswith(R.PRED_PROB_PREFIX)]
    np.testing.assert_allclose(probs, saved[cols].to_numpy(), rtol=0, atol=1e-5)
    for path in folder.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    return folder


def _auto_code(folder: Path, texts: list[str]) -> str:
    """PEFT's or transformers' auto class alone, as a user would call it."""
    peft = (folder / "adapter_config.json").is_file()
    cls = "peft.AutoPeftModelForSequenceClassification" if peft \
        else "transformers.AutoModelForSequenceClassification"
    return _GUARD + f"""
import json, torch, peft, transformers
model = {cls}.from_pretrained('.').eval()
tok = transformers.AutoTokenizer.from_pretrained('.')
enc = tok({texts!r}, truncation=True, max_length=64, padding=True, return_tensors='pt')
with torch.no_grad():
    print(json.dumps(model(**enc).logits.softmax(-1).tolist()))
"""


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "full"])
def test_native_folder_loads_with_auto_classes(nodrop: str, runs_dir: Path, method: str) -> None:
    folder = _check(_train(method, nodrop, runs_dir, "pooling=native"), _auto_code)
    if method == "full":
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["BertForSequenceClassification"]
        assert config["id2label"] == {"0": "rotten", "1": "fresh"}
        return
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["base_model_name_or_path"] == nodrop
    assert {"bert.pooler", "classifier"} <= set(config["modules_to_save"])
    assert all(t.startswith("bert.encoder.") for t in config["target_modules"])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_shared_head_folder_loads_with_the_cards_lines(nodrop: str, runs_dir: Path,
                                                       method: str) -> None:
    folder = _check(_train(method, nodrop, runs_dir))
    card = (folder / artifacts.CARD_FILE).read_text()
    assert f"METHOD={method}" in card and "test metric" in card and "accuracy" in card
    if method == "lora":
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["task_type"] == "FEATURE_EXTRACTION"
        assert all(t.startswith("encoder.") for t in config["target_modules"])


def test_embedded_model_is_named_by_its_hub_id(runs_dir: Path) -> None:
    """No absolute .venv path in what a run saves: the embedded MiniLM is named by hub id."""
    record = _train("lora", "minilm", runs_dir, "max_steps=1", "train_size=16", "eval_size=8")
    folder = Path(record[R.RECORD_PATH]).parent / R.MODEL_DIR
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ".venv" not in (folder / artifacts.CARD_FILE).read_text()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_with_the_native_head_and_reloads(runs_dir: Path,
                                                              method: str) -> None:
    """GPT-2's native head reads the last real token; every method trains with it, and
    `make predict`'s rebuild gives the run's probabilities."""
    import torch

    from experiments.tools.predict import predict_probs

    record = _train(method, "tiny-gpt2", runs_dir, "pooling=native", "max_steps=2")
    run_dir = Path(record[R.RECORD_PATH]).parent
    model, tok, manifest = artifacts.load_model(run_dir / R.MODEL_DIR)
    cfg = artifacts.run_config(manifest)
    saved = pd.read_parquet(run_dir / R.PREDICTIONS_FILE)
    texts = list(load_data(cfg).splits["test"]["text"])
    probs = predict_probs(model, tok, texts, cfg, torch.device("cpu"))
    cols = [c for c in saved.columns if c.startswith(R.PRED_PROB_PREFIX)]
    np.testing.assert_allclose(probs, saved[cols].to_numpy(), rtol=0, atol=1e-5)
