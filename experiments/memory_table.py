"""`make memory`: a few training steps of every method, and the table of what memory they cost.

Run it:
    python -m experiments.memory_table                     # the embedded MiniLM
    python -m experiments.memory_table model=tiny-bert     # any key=value applies to every run
    python -m experiments.memory_table --out some.csv      # default: <runs_dir>/memory_table.csv

Every method in `methods.METHODS` runs (so methods added later are included), plus `full` with
`precision=mixed-12n`. Each row puts the lecture's prediction beside the exact ledger (weights +
gradients + optimizer state; buffers excluded), the saved-activation peak and the device peak.
Each run is its own process, so the CPU resident-set peak of one is not hidden by memory an
earlier run freed but the allocator kept. The run records go to a temporary folder; only the
CSV is kept, for the analysis plots.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from experiments.config import Config
from experiments.train import EXIT_USER_ERROR
from experiments.units import human_bytes

# Short runs: the ledger and the activation peak come from the first step; three steps keep
# the device peak honest (the optimizer state exists from the first step on).
BASE_ARGS = ["model=minilm", "train_size=96", "eval_size=32", "max_steps=3", "epochs=1",
             "wandb=disabled", "progress=false"]
CSV_FIELDS = ("method", "precision", "N", "M", "predicted_formula", "formula_N", "predicted_bytes",
              "ledger_bytes", "weights_bytes", "grads_bytes", "optimizer_bytes",
              "ledger_vs_predicted", "activations_peak_bytes", "device_peak_bytes",
              "peak_method", "model", "batch", "buffers_bytes", "buffers_excluded", "run_id")


def run_list() -> list[tuple[str, list[str]]]:
    """(label, extra args) of every run in the table: each registered method, then full 12N."""
    from methods import METHODS

    return [(name, [f"method={name}"]) for name in METHODS] + [
        ("full", ["method=full", "precision=mixed-12n"])]


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One table row (the CSV's fields) from a run record."""
    mem = record["memory"]
    batch = mem.get("activations_batch", {})
    shape = batch.get("input_ids") or batch.get("features") or []
    out = {k: mem.get(k) for k in CSV_FIELDS if k in mem}
    out.update({"method": record["method"], "precision": record["precision"],
                "model": record["model"]["name"], "run_id": record["run_id"],
                "batch": "x".join(str(d) for d in shape)})
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table as printed: bytes in KiB/MiB/GiB, the ratio to two decimals."""
    def b(v: Any) -> str:
        return human_bytes(v) if isinstance(v, (int, float)) else "-"

    head = ("method", "precision", "N", "M", "predicted", "", "ledger", "ratio", "activations",
            "device peak")
    lines = [head]
    for r in rows:
        ratio = r.get("ledger_vs_predicted")
        lines.append((r["method"], r["precision"], f"{r.get('N', 0):,}", f"{r.get('M', 0):,}",
                      r.get("predicted_formula", "-"), b(r.get("predicted_bytes")),
                      b(r.get("ledger_bytes")), f"{ratio:.2f}" if ratio is not None else "-",
                      b(r.get("activations_peak_bytes")), b(r.get("device_peak_bytes"))))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV (raw byte counts) for the analysis plots."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def footnote(rows: list[dict[str, Any]]) -> str:
    """What the columns mean, printed under the table."""
    methods = {r.get("peak_method") for r in rows if r.get("peak_method")}
    return ("N = every parameter once, M = trainable; predicted = the lecture's Adam budget "
            "(in 4N+16M its N is the frozen base, N - M here, since it counts the weights as "
            "N+M floats); ledger = live weights + grads + optimizer state after the first step "
            "(buffers excluded); ratio = ledger / predicted; activations = peak bytes saved for "
            "backward in the first step.\n"
            f"device peak: {'; '.join(sorted(methods)) or '-'}"
            + ("; on CPU it also holds transient intermediates and memory the allocator freed but "
               "kept, so it overstates what the ledger and activations need"
               if any("CPU" in m for m in methods) else ""))


def train_once(args: list[str], runs_dir: Path) -> dict[str, Any]:
    """Train one configuration in a fresh process; its record (RuntimeError if it failed)."""
    cmd = [sys.executable, "-m", "experiments.train", *args, f"runs_dir={runs_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    records = sorted(runs_dir.glob("*/record.json"))
    if proc.returncode != 0 or not records:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}")
    return json.loads(records[-1].read_text())


def main(argv: list[str] | None = None) -> int:
    """Run every method briefly, print the table, write the CSV; 1 if any run failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out = Path(argv[i + 1])
        del argv[i:i + 2]
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="memory-table-") as tmp:
        for i, (label, extra) in enumerate(run_list()):
            print(f"running {label} {' '.join(extra[1:])}".rstrip(), file=sys.stderr, flush=True)
            try:
                rows.append(row(train_once([*BASE_ARGS, *extra, *argv], Path(tmp) / str(i))))
            except RuntimeError as exc:  # one broken method must not hide the others' rows
                failed.append(label)
                print(f"  {label} failed: {exc}", file=sys.stderr)
                if f"exit {EXIT_USER_ERROR}:" in str(exc):  # bad arguments: all runs would fail
                    return EXIT_USER_ERROR
    print(format_table(rows))
    print(footnote(rows))
    runs_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("runs_dir=")), "")
    path = out or Path(runs_dir or Config().resolved_runs_dir()) / "memory_table.csv"
    write_csv(rows, path)
    print(f"written: {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
