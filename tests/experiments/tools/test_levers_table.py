"""The levers table from records: rows by category, step time against the group's plain run,
notes on what each lever moved, the CSV and the figure; and one real row on tiny-bert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experiments.tools import levers_table as lt


def _record(params: int, four: int = 0, consts: int = 0, acts: int = 100, opt: int = 80,
            train_s: float = 1.0) -> dict[str, Any]:
    at_peak = {"parameters": params, "gradients": 40, "optimizer_state": opt,
               "activations": acts, "temporaries": 7, "inputs": 3}
    if four:
        at_peak.update({"weights_4bit": four, "quant_constants": consts})
    return {"model": {"name": "tiny"}, "steps": 4, "time": {"train_s": train_s},
            "memory": {"predicted_formula": "16N", "predicted_bytes": 160,
                       "measured_state_peak_bytes": 161, "state_vs_predicted": 161 / 160,
                       "measured_peak_bytes": sum(at_peak.values()), "measured_at_peak": at_peak,
                       "N": 10, "M": 10, "optimizer_bytes": opt, "activations_peak_bytes": acts,
                       "measured_batch": {"input_ids": [32, 64]}}}


def test_rows_table_notes_csv_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured row is run; the table, notes, CSV and figure come from the records."""
    records = {"fp32": _record(40), "8-bit AdamW": _record(40, opt=21, train_s=1.5),
               "checkpointing": _record(40, acts=10, train_s=1.3),
               "nf4": _record(20, four=5, consts=1, train_s=2.0)}
    seen: list[tuple[list[str], int]] = []

    def fake_run(args: list[str], runs_dir: Path, nproc: int = 1) -> dict[str, Any]:
        seen.append((args, nproc))
        lever = next(lever for _, lever, extra, _ in lt.ROWS if args[-len(extra):] == extra)
        return records.get(lever.split(" +")[0].split(",")[0], _record(40))

    monkeypatch.setattr(lt, "run_row", fake_run)
    out = tmp_path / "levers.csv"
    assert lt.main(["model=tiny-bert", "--out", str(out), "--reports", str(tmp_path)]) == 0
    assert len(seen) == len(lt.ROWS) and ("dist=fsdp" in seen[5][0] and seen[5][1] == 2)
    assert all("model=tiny-bert" in args for args, _ in seen)
    text = capsys.readouterr().out
    assert "| full  | 8-bit AdamW" in text and "1.50x" in text
    assert "optimizer state 8.00 -> 2.10 bytes per trained parameter" in text
    assert "activations saved for backward 100 B -> 10 B" in text
    assert "5 B 4-bit + 1 B constants" in text
    header = out.read_text().splitlines()[0].split(",")
    assert header == list(lt.CSV_FIELDS)
    assert (tmp_path / "memory_levers.png").stat().st_size > 0
    assert (tmp_path / "memory_levers.svg").exists()


@pytest.mark.slow
def test_one_real_row(tmp_path: Path) -> None:
    """A real nf4 row on tiny-bert: the 4-bit codes and constants are their own columns and the
    measured state is the formula's."""
    record = lt.run_row(["model=tiny-bert", "train_size=32", "eval_size=8", "max_steps=2",
                         "batch_size=8", "precision=fp32", "wandb=disabled", "progress=false",
                         "method=lora", "lora.quantize=nf4"], tmp_path)
    r = lt.row(record, "lora", "nf4")
    assert r["weights_4bit"] > 0 and r["quant_constants"] > 0
    assert r["state_vs_predicted"] == pytest.approx(1.0, abs=2e-3)
