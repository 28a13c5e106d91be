"""The W&B run as its UI shows it: told apart by name, grouped by experiment and data, tagged,
validation plotted against epochs, the console captured, the model attached as an artifact."""

from __future__ import annotations

import glob
from pathlib import Path

from helpers import read_wandb_file

from experiments.contract import record as R
from experiments.harness.config import resolve
from experiments.harness.tracking import identity
from experiments.train import run


def test_offline_wandb_run_is_organised_for_comparison(runs_dir: Path) -> None:
    record = run(resolve(["method=lora", "model=tiny-bert", "train_size=48", "eval_size=16",
                          "batch_size=16", "max_steps=3", "wandb=offline", "log_every=1",
                          "seed=3"]))
    files = glob.glob(str(Path(record[R.RECORD_PATH]).parent / "wandb" / "offline-run-*" /
                          "*.wandb"))
    wb = read_wandb_file(files[0])
    assert wb["run"]["name"] == "lora-rotten_tomatoes-s3"
    assert wb["run"]["group"] == "lora-rotten_tomatoes"
    assert set(wb["run"]["tags"]) == {"method:lora", "data:rotten_tomatoes", "model:tiny-bert",
                                      f"precision:{record[R.PRECISION]}"}
    for key in (R.TEST_ACCURACY, R.VAL_BEST_ACCURACY, f"{R.TIME}/{R.SAMPLES_PER_S}",
                R.TEST_F1, R.TEST_MCC):
        assert key in wb["summary"], key
    assert wb["metrics"]["val/*"] == "train/epoch"
    assert any("val/accuracy" in h and "train/epoch" in h for h in wb["history"])
    assert "step 3: train/loss=" in wb["console"]  # no terminal here: plain lines, captured
    [artifact] = wb["artifacts"]
    assert artifact["type"] == "model" and artifact["name"] == "model-lora-rotten_tomatoes-s3"
    assert "adapter_config.json" in artifact["files"] and "README.md" in artifact["files"]


def test_names_use_the_experiment_and_short_data_names() -> None:
    cfg = resolve(["method=full", "name=full-long", "data=/tmp/my data/pairs.csv",
                   "model=./models/tiny", "precision=fp32"])
    who = identity(cfg, "fp32")
    assert who["name"] == "full-long-pairs-s0" and who["group"] == "full-long-pairs"
    assert "model:tiny" in who["tags"]
    hub = identity(resolve(["method=lora", "data=glue:mrpc"]), "bf16-mixed")
    assert hub["group"] == "lora-glue-mrpc" and "precision:bf16-mixed" in hub["tags"]


def _piped(*args: str) -> list[str]:
    """What a run prints with its output piped (no terminal), as `make experiment | cat`."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "experiments.train", "method=lora",
                           "train_size=320", "eval_size=32", "epochs=2", "log_every=5",
                           "wandb=disabled", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TUNEBENCH_CPU_BF16": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    return (done.stdout + done.stderr).splitlines()


def test_piped_output_has_one_line_per_logging_interval(nodrop: str) -> None:
    lines = _piped(f"model={nodrop}")  # a local folder: transformers would draw its loading bar
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 20 // 5 and len(lines) <= len(steps) + 1, lines
    assert "val/accuracy" in "".join(steps) and not any("\r" in line for line in lines)


def test_progress_false_prints_only_the_summary(nodrop: str) -> None:
    lines = _piped(f"model={nodrop}", "progress=false")
    assert len(lines) == 1 and lines[0].startswith("lora: test/accuracy="), lines
