"""The Makefile passes what a user types as typed: TEXT, FILE, ARGS, DATA, MODEL and RUN are
never expanded by make or the shell; under torchrun a bad input ends with its one line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from experiments.harness.config import resolve
from experiments.train import run

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # -o: never rebuild .venv here (its stamp may be older than an edited pyproject.toml).
    return subprocess.run(["make", "-s", "-o", ".venv/.stamp", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run with its saved model, in a folder whose path has a space."""
    runs = tmp_path_factory.mktemp("cli") / "my runs"
    rec = run(resolve(["method=head", "model=tiny-bert", "train_size=64", "eval_size=32",
                       "max_steps=2", "progress=false", "wandb=disabled", f"runs_dir={runs}"]))
    return Path(rec["record_path"]).parent


def _predictions(res: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in res.stdout.splitlines()]


def test_predict_text_with_dollars_quotes_and_shell_syntax_arrives_as_typed(
        saved_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"I paid $10 for it's $(shell touch {marker}) `touch {marker}` $HOME \"q\""
    rows = _predictions(_make("predict", f"RUN={saved_run}", f"TEXT={text}"))
    assert len(rows) == 1 and rows[0][2] == text
    assert not marker.exists()  # neither make's $(shell) nor the shell's backquotes ran


def test_predict_file_path_with_a_space_and_a_newline_in_text(saved_run: Path,
                                                              tmp_path: Path) -> None:
    texts = tmp_path / "my texts $x.txt"
    texts.write_text("a gorgeous film\na dull one\n")
    rows = _predictions(_make("predict", f"RUN={saved_run}", f"FILE={texts}", "ARGS=device=cpu"))
    assert [r[2] for r in rows] == ["a gorgeous film", "a dull one"]
    # A TEXT with a newline is one text, printed on one line.
    rows = _predictions(_make("predict", f"RUN={saved_run}", "TEXT=first line\nsecond line"))
    assert len(rows) == 1 and rows[0][2] == "first line\\nsecond line"


def test_experiment_data_and_args_are_not_expanded(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = f"my $(shell touch {marker}) $$HOME file.csv"
    res = _make("experiment", "METHOD=head", f"DATA={data}", "MODEL=tiny-bert",
                f"ARGS=max_steps=1 name=`id>{marker}`$$(id>{marker})")
    assert res.returncode != 0 and not marker.exists()
    assert f"data file '{data}' not found" in res.stderr


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for 2 ranks")
def test_torchrun_bad_input_ends_with_the_one_line(tmp_path: Path) -> None:
    res = _make("experiment", "NPROC=2", "METHOD=head", "MODEL=tiny-bert",
                "ARGS=max_length=600 train_size=64 eval_size=32 max_steps=1 wandb=disabled")
    lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("make")]
    assert res.returncode != 0 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: max_length = 600 exceeds")
