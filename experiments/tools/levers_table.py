"""The memory levers side by side: each alone and the useful combinations, measured by category.

Run it (`make memory` runs it after the methods' table):
    python -m experiments.tools.levers_table                  # the embedded MiniLM
    python -m experiments.tools.levers_table model=tiny-bert  # key=value applies to every row
    python -m experiments.tools.levers_table --out f.csv --reports DIR

Full fine-tuning: fp32 (the plain run), mixed-12n, 8-bit AdamW, activation checkpointing, FSDP
over 2 processes (per rank); LoRA: plain, checkpointing, nf4 (QLoRA), nf4 + checkpointing. Each
row is a short run of its own (`BASE_ARGS`), measured on one step by
`experiments.memory.memtrack`: bytes by category at the step's peak, the formula's prediction
against the measured state peak (`experiments.memory.levers` for nf4 and 8-bit AdamW), and the
time per training step relative to its group's plain row (wall time of the run's steps, the one
measured step included). The notes under the table say how far each lever moved its own
category. Writes `<runs_dir>/memory_levers.csv` and `reports/memory_levers.{png,svg}`.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path
from typing import Any

from experiments.contract import record as R
from experiments.contract.units import human_bytes
from experiments.harness.config import Config
from experiments.tools.memory_table import finish_bars, report_written, train_once

# Eight steps: the measured step is one of them, so the time per step is mostly unmeasured steps.
BASE_ARGS = ["model=minilm", "train_size=256", "eval_size=32", "max_steps=8", "epochs=1",
             "precision=fp32", "wandb=disabled", "progress=false", "save=none"]
CKPT = "activation_checkpointing=true"
# (group, lever, args, processes): the first row of a group is its plain run.
ROWS = (
    ("full", "fp32", ["method=full"], 1),
    ("full", "mixed-12n", ["method=full", "precision=mixed-12n"], 1),
    ("full", "8-bit AdamW", ["method=full", "optimizer_impl=adamw8bit"], 1),
    ("full", "checkpointing", ["method=full", CKPT], 1),
    ("full", "8-bit AdamW + checkpointing", ["method=full", "optimizer_impl=adamw8bit", CKPT], 1),
    ("full", "FSDP, 2 processes (rank 0)", ["method=full", "dist=fsdp"], 2),
    ("lora", "plain", ["method=lora"], 1),
    ("lora", "checkpointing", ["method=lora", CKPT], 1),
    ("lora", "nf4", ["method=lora", "lora.quantize=nf4"], 1),
    ("lora", "nf4 + checkpointing", ["method=lora", "lora.quantize=nf4", CKPT], 1),
)
# Categories as the table and figure show them, with the figure's colours (Okabe-Ito).
SHOWN = ((R.CAT_PARAMETERS, "fp32/bf16 weights", "#0072B2"),
         (R.CAT_WEIGHTS_4BIT, "4-bit weights", "#56B4E9"),
         (R.CAT_QUANT_CONSTANTS, "quant. constants", "#CC79A7"),
         (R.CAT_GRADIENTS, "gradients", "#009E73"),
         (R.CAT_OPTIMIZER_STATE, "optimizer state", "#D55E00"),
         (R.CAT_ACTIVATIONS, "activations", "#E69F00"))
OTHER = "other"  # every other category (temporaries, inputs, buffers, weight casts)
CSV_FIELDS = ("group", "lever", R.PREDICTED_FORMULA, R.PREDICTED_BYTES,
              R.MEASURED_STATE_PEAK_BYTES, R.STATE_VS_PREDICTED, R.MEASURED_PEAK_BYTES,
              *(c for c, _, _ in SHOWN), OTHER, "step_s", "step_time_vs_plain")


def run_row(args: list[str], runs_dir: Path, nproc: int = 1) -> dict[str, Any]:
    """Train one row in fresh processes (torchrun for several); its record, or RuntimeError."""
    return train_once(args, runs_dir, nproc)


def row(record: dict[str, Any], group: str, lever: str) -> dict[str, Any]:
    """One table row from a record: the formula, the measurement, each category at the peak."""
    mem = record[R.MEMORY]
    at_peak = dict(mem.get(R.MEASURED_AT_PEAK, {}))
    out = {"group": group, "lever": lever, "model": record[R.MODEL]["name"],
           **{k: mem.get(k) for k in (R.PREDICTED_FORMULA, R.PREDICTED_BYTES,
                                      R.MEASURED_STATE_PEAK_BYTES, R.STATE_VS_PREDICTED,
                                      R.MEASURED_PEAK_BYTES)}}
    for cat, _, _ in SHOWN:
        out[cat] = at_peak.pop(cat, 0)
    out[OTHER] = sum(at_peak.values())
    out["N"], out["M"] = mem.get("N"), mem.get("M")
    out[R.OPTIMIZER_BYTES] = mem.get(R.OPTIMIZER_BYTES)
    out[R.ACTIVATIONS_PEAK_BYTES] = mem.get(R.ACTIVATIONS_PEAK_BYTES)
    shape = mem.get(R.MEASURED_BATCH) or []  # [rows, tokens]; older records: shapes by input
    shape = shape.get(R.BATCH_TOKENS, []) if isinstance(shape, dict) else shape
    out["batch"] = "x".join(str(d) for d in shape)
    steps = max(1, int(record.get("steps") or 1))
    out["step_s"] = record[R.TIME]["train_s"] / steps
    return out


def relative_times(rows: list[dict[str, Any]]) -> None:
    """Each row's step time over its group's plain (first) row."""
    plain: dict[str, float] = {}
    for r in rows:
        base = plain.setdefault(r["group"], r["step_s"])
        r["step_time_vs_plain"] = r["step_s"] / base if base else None


def format_table(rows: list[dict[str, Any]]) -> str:
    """The printed table: bytes in KiB/MiB, ratios to three decimals, times to two."""
    def b(v: Any) -> str:
        return human_bytes(v) if isinstance(v, (int, float)) and v else "-"

    def x(v: Any, digits: int) -> str:
        return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"

    head = ("group", "lever", "formula", "predicted", "state peak", "meas/formula",
            *(name for _, name, _ in SHOWN), OTHER, "step peak", "step time")
    lines = [head] + [(r["group"], r["lever"], r.get(R.PREDICTED_FORMULA) or "-",
                       b(r.get(R.PREDICTED_BYTES)), b(r.get(R.MEASURED_STATE_PEAK_BYTES)),
                       x(r.get(R.STATE_VS_PREDICTED), 3), *(b(r[c]) for c, _, _ in SHOWN),
                       b(r[OTHER]), b(r.get(R.MEASURED_PEAK_BYTES)),
                       x(r.get("step_time_vs_plain"), 2) + "x") for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = [" | ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines]
    text.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(f"| {t} |" for t in text)


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """How far each lever moved its own category, against its group's plain row."""
    plain = {r["group"]: r for r in reversed(rows)}
    out = []
    for r in rows:
        p = plain[r["group"]]
        if r is p:
            continue
        lever = r["lever"]
        if "checkpointing" in lever:
            out.append(f"{r['group']} {lever}: activations saved for backward "
                       f"{human_bytes(p[R.ACTIVATIONS_PEAK_BYTES])} -> "
                       f"{human_bytes(r[R.ACTIVATIONS_PEAK_BYTES])} (largest over the step)")
        if "8-bit" in lever and r.get(R.OPTIMIZER_BYTES) and r.get("M"):
            out.append(f"{r['group']} {lever}: optimizer state {p[R.OPTIMIZER_BYTES] / p['M']:.2f}"
                       f" -> {r[R.OPTIMIZER_BYTES] / r['M']:.2f} bytes per trained parameter")
        if "nf4" in lever and r[R.CAT_WEIGHTS_4BIT]:
            out.append(f"{r['group']} {lever}: weights {human_bytes(p[R.CAT_PARAMETERS])} fp32 "
                       f"-> {human_bytes(r[R.CAT_PARAMETERS])} fp32 + "
                       f"{human_bytes(r[R.CAT_WEIGHTS_4BIT])} 4-bit + "
                       f"{human_bytes(r[R.CAT_QUANT_CONSTANTS])} constants")
        if "FSDP" in lever:
            out.append(f"{r['group']} {lever}: weights, gradients and state per rank "
                       f"{human_bytes(r[R.MEASURED_STATE_PEAK_BYTES])} "
                       f"(one process: {human_bytes(p[R.MEASURED_STATE_PEAK_BYTES])})")
    return out


def plot(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """`memory_levers.{png,svg}`: one stacked bar per row (categories at the step's peak), the
    formula's prediction as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.9), layout="constrained")
    ys = range(len(rows) - 1, -1, -1)
    starts = [0.0] * len(rows)
    for cat, name, color in (*SHOWN, (OTHER, "other (temporaries, inputs, ...)", "#BBBBBB")):
        sizes = [r[cat] / 2**20 for r in rows]
        ax.barh(list(ys), sizes, left=starts, color=color, height=0.7, label=name)
        starts = [s + w for s, w in zip(starts, sizes, strict=True)]
    ax.scatter([(r.get(R.PREDICTED_BYTES) or 0) / 2**20 for r in rows], list(ys), marker="|",
               s=400, color="black", linewidths=2.5, zorder=5, label="formula")
    ax.set_yticks(list(ys), [f"{r['group']}: {r['lever']}" for r in rows])
    ax.set_xlabel("MiB live at the measured step's peak")
    ax.set_title(f"Memory levers, one training step by category: {rows[0]['model']}, "
                 f"batch {rows[0]['batch']} tokens")
    return finish_bars(fig, ax, folder, "memory_levers")


def main(argv: list[str] | None = None) -> int:
    """Run every row, print the table and notes, write the CSV and the figure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = {k: argv.pop(argv.index(k) + 1) for k in ("--out", "--reports") if k in argv}
    argv = [a for a in argv if a not in opts]
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="memory-levers-") as tmp:
        for i, (group, lever, extra, nproc) in enumerate(ROWS):
            print(f"running {group}: {lever}", file=sys.stderr, flush=True)
            try:
                record = run_row([*BASE_ARGS, *argv, *extra], Path(tmp) / str(i), nproc)
                rows.append(row(record, group, lever))
            except RuntimeError as exc:  # one broken lever must not hide the others' rows
                failed.append(f"{group}: {lever}")
                print(f"  failed: {exc}", file=sys.stderr)
    relative_times(rows)
    print(format_table(rows))
    print("\n".join(notes(rows)))
    runs_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("runs_dir=")), "")
    path = Path(opts.get("--out") or Path(runs_dir or Config().resolved_runs_dir())
                / "memory_levers.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    figures = plot(rows, R.reports_dir(opts.get("--reports"))) if rows else []
    return report_written([path, *figures], failed)


if __name__ == "__main__":
    sys.exit(main())
