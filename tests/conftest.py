"""Shared fixtures: an isolated runs folder, offline W&B, tiny models and small data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ARCHS = ("tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-gpt2", "tiny-llama")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test writes runs under its own tmp folder and never talks to W&B's servers."""
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    # Tests resolve the code PRESETs, whatever presets files `make tune` has committed.
    monkeypatch.setenv("TUNEBENCH_PRESETS_DIR", str(tmp_path / "presets"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # precision=auto is fp32 in tests whatever the CPU (bf16 where it is native): the same
    # numbers on every CI machine; tests of the bf16 path ask for it explicitly.
    monkeypatch.setenv("TUNEBENCH_CPU_BF16", "0")


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """The folder this test's runs are written to."""
    return Path(os.environ["RUNS_DIR"])


@pytest.fixture(scope="session")
def tiny(request: pytest.FixtureRequest):  # noqa: ANN201
    """A factory: tiny(arch, num_labels=2) -> (model, tokenizer, info), seeded."""
    from experiments.inputs.backbones import load_backbone

    def make(arch: str, num_labels: int = 2, pooling: str = "mean"):  # noqa: ANN202
        torch.manual_seed(0)
        return load_backbone(arch, num_labels, pooling=pooling, dropout=0.0)

    return make
