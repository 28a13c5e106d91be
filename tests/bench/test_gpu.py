"""The benchmark on CUDA: bf16-mixed, device peak and MFU (needs a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cli

pytestmark = pytest.mark.gpu


def test_smoke_on_cuda_reports_bf16_peak_and_mfu(tmp_path: Path) -> None:
    assert cli.main(["--smoke", "--device", "cuda", "--only", "methods,peft", "--out",
                     str(tmp_path), "--no-progress"]) == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["label"]: r for r in res["sections"]["methods"]["rows"]}
    assert rows["full"]["precision"] == "bf16-mixed"
    assert rows["full"]["device_peak_bytes"] > rows["full"]["ledger_bytes"] * 0.5
    assert res["machine"]["gpu"]
    if any(k in res["machine"]["gpu"] for k in ("H100", "H200", "A100")):
        assert 0 < rows["full"]["mfu"] < 1
    assert "MFU" in (tmp_path / "BENCHMARKS.md").read_text()
