"""`make memory`: a few training steps of every method, each step's memory measured by category.

Run it:
    python -m experiments.tools.memory_table                # the embedded MiniLM
    python -m experiments.tools.memory_table model=tiny-bert  # any key=value applies to every run
    python -m experiments.tools.memory_table --out some.csv   # default: <runs_dir>/memory_table.csv
    python -m experiments.tools.memory_table --reports DIR    # figure folder (default: reports/)

Every method in `methods.METHODS` runs (methods added later are included, with the formula
`predict` gives them), LoRA once per target set (attention, mlp, all), plus full fine-tuning in
the mixed-12n layout and full and LoRA with torch's foreach AdamW instead of the fused default.
Each row holds the lecture's prediction against `measured_state_peak_bytes`, the peak over one
measured step of weights + gradients + optimizer state + the optimizer's temporaries
(`experiments.memory.memtrack`), with the step's activation peak and whole peak beside. Rows whose
ratio is off 1 by more than 2% are explained under the table by the largest optimizer
temporaries the measurement saw. Each run is its own process; the records go to a temporary
folder, and the CSV and `memory_breakdown.{png,svg}` (the categories at each row's peak, the
prediction marked) are kept.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from experiments.contract import record as R
from experiments.contract.units import human_bytes
from experiments.harness.config import Config
from experiments.memory import memtrack
from experiments.train import EXIT_USER_ERROR

# Short runs: three steps, so the measured step (the second) starts with the optimizer state.
# fp32 unless a row says otherwise: the lecture's baseline, and the same table on every CPU
# (precision=auto is bf16-mixed on CPUs with native bf16). ARGS come after these, a row's own
# options last (a row is what it says, e.g. full in mixed-12n).
BASE_ARGS = ["model=minilm", "train_size=96", "eval_size=32", "max_steps=3", "epochs=1",
             "precision=fp32", "wandb=disabled", "progress=false"]
# The columns: record keys (experiments.contract.record) but for method (the row's label) and
# formula.
CSV_FIELDS = ("method", R.OPTIMIZER_IMPL, R.PRECISION, "formula", R.PREDICTED_BYTES,
              R.MEASURED_STATE_PEAK_BYTES, R.STATE_VS_PREDICTED, R.ACTIVATIONS_PEAK_BYTES,
              R.MEASURED_PEAK_BYTES)
LORA_TARGETS = ("attention", "mlp", "all")
OFF_BY = 0.02  # a row whose ratio is further than this from 1 is explained under the table


def run_list() -> list[tuple[str, list[str]]]:
    """(label, extra args) of every row: each registered method (LoRA per target set), then
    full in the 12N layout and full and LoRA with foreach AdamW."""
    from methods import METHODS

    rows: list[tuple[str, list[str]]] = []
    for name in METHODS:
        if name == "lora":
            rows += [(f"lora ({t})", ["method=lora", f"lora.targets={t}"]) for t in LORA_TARGETS]
        elif name == "full":
            rows.append(("full", ["method=full", "precision=fp32"]))
        else:
            rows.append((name, [f"method={name}"]))
    if "full" in METHODS:
        rows += [("full", ["method=full", "precision=mixed-12n"]),
                 ("full", ["method=full", "precision=fp32", "optimizer_impl=foreach"])]
    if "lora" in METHODS:
        rows.append(("lora (all)", ["method=lora", "lora.targets=all", "optimizer_impl=foreach"]))
    return rows


def row(record: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    """One row from a run record: the CSV's fields, then the details the figure and notes use."""
    mem = record[R.MEMORY]
    out = {k: mem.get(k) for k in CSV_FIELDS[1:]}
    out.update({"method": label or record[R.METHOD], R.PRECISION: record[R.PRECISION],
                "formula": mem.get(R.PREDICTED_FORMULA),
                # not in the CSV:
                "at_peak": mem.get(R.MEASURED_AT_PEAK, {}),
                "at_state_peak": mem.get(R.MEASURED_AT_STATE_PEAK, {}),
                "temporaries": mem.get(R.OPTIMIZER_TEMPORARIES, []),
                "model": record[R.MODEL]["name"],
                "batch": "x".join(str(d) for d in _batch_shape(mem)),
                "tokens": R.BATCH_TOKENS in _batch_shapes(mem)})
    return out


def _batch_shapes(mem: dict[str, Any]) -> dict[str, list[int]]:
    """The measured batch's shapes by input (older records kept them under measured_batch)."""
    shapes = mem.get(R.MEASURED_BATCH_SHAPES, mem.get(R.MEASURED_BATCH, {}))
    return shapes if isinstance(shapes, dict) else {}


def _batch_shape(mem: dict[str, Any]) -> list[int]:
    batch = _batch_shapes(mem)
    return batch.get(R.BATCH_TOKENS) or batch.get(R.BATCH_FEATURES) or []


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table as printed: bytes in KiB/MiB/GiB, the ratio to three decimals."""
    def b(v: Any) -> str:
        return human_bytes(v) if isinstance(v, (int, float)) else "-"

    head = ("method", "optimizer", "precision", "formula", "predicted", "state peak", "ratio",
            "activations", "step peak")
    lines = [head]
    for r in rows:
        ratio = r.get(R.STATE_VS_PREDICTED)
        lines.append((r["method"], r.get(R.OPTIMIZER_IMPL) or "-", r[R.PRECISION],
                      r.get("formula") or "-", b(r.get(R.PREDICTED_BYTES)),
                      b(r.get(R.MEASURED_STATE_PEAK_BYTES)),
                      f"{ratio:.3f}" if ratio is not None else "-",
                      b(r.get(R.ACTIVATIONS_PEAK_BYTES)), b(r.get(R.MEASURED_PEAK_BYTES))))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = ["  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def notes(rows: list[dict[str, Any]]) -> str:
    """What the columns mean, and for each row off 1 by more than 2%, what the step held."""
    out = ["predicted = the lecture's Adam budget (N all parameters, M trainable; in 4N+16M the "
           "lecture's N is the frozen base, N - M here); state peak = the measured step's peak "
           "of weights + gradients + optimizer state + the optimizer's temporaries "
           "(experiments.memory.memtrack); ratio = state peak / predicted; activations = the "
           "largest live bytes saved for backward (autocast's weight copies apart); step peak = "
           "all live tensor bytes at the step's peak."]
    for r in rows:
        ratio = r.get(R.STATE_VS_PREDICTED)
        if ratio is None or abs(ratio - 1) <= OFF_BY:
            continue
        extra = r[R.MEASURED_STATE_PEAK_BYTES] - r[R.PREDICTED_BYTES]
        temps = r.get("temporaries") or []
        seen = ", ".join(f"{t['made_by']} ({human_bytes(t['bytes'])})" for t in temps[:3])
        out.append(f"{r['method']} {r[R.OPTIMIZER_IMPL]} {r[R.PRECISION]}: {ratio:.3f}, "
                   f"{human_bytes(extra)} over the formula; optimizer temporaries at the state "
                   f"peak: {human_bytes(r['at_state_peak'].get(memtrack.OPTIMIZER_TEMPORARIES, 0))}"
                   + (f", the largest {seen}" if seen else ""))
    return "\n".join(out)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV (raw byte counts), exactly `CSV_FIELDS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# Categories as the figure stacks them, bottom to top, with their colours (Okabe-Ito).
FIGURE_CATEGORIES = (
    (memtrack.PARAMETERS, "#0072B2"), (memtrack.GRADIENTS, "#56B4E9"),
    (memtrack.OPTIMIZER_STATE, "#009E73"), (memtrack.OPTIMIZER_TEMPORARIES, "#D55E00"),
    (memtrack.ACTIVATIONS, "#E69F00"), (memtrack.WEIGHT_CASTS, "#F0E442"),
    (memtrack.TEMPORARIES, "#CC79A7"), (memtrack.BUFFERS, "#999999"),
    (memtrack.INPUTS, "#000000"))


def plot_breakdown(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """`memory_breakdown.{png,svg}`: a stacked bar per row (each category at the step's peak),
    the formula's prediction as a black mark, the measured state peak as an open diamond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']} · {r[R.OPTIMIZER_IMPL]} · {r[R.PRECISION]}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.8), layout="constrained")
    ys = list(range(len(rows)))[::-1]
    mib = 2**20
    left = [0.0] * len(rows)
    for name, color in FIGURE_CATEGORIES:
        width = [r["at_peak"].get(name, 0) / mib for r in rows]
        if any(width):
            ax.barh(ys, width, left=left, color=color, height=0.7,
                    label=name.replace("_", " "))
        left = [a + w for a, w in zip(left, width, strict=True)]
    ax.scatter([r[R.PREDICTED_BYTES] / mib for r in rows], ys, marker="|", s=400,
               color="black", linewidths=2.5, zorder=5, label="predicted (formula)")
    ax.scatter([r[R.MEASURED_STATE_PEAK_BYTES] / mib for r in rows], ys, marker="D", s=30,
               facecolors="white", edgecolors="black", zorder=6, label="measured state peak")
    ax.set_yticks(ys, labels)
    ax.set_xlabel("MiB live at the step's peak (one training step, measured)")
    model = rows[0].get("model", "")
    tokens = next((r["batch"] for r in rows if r.get("tokens")), "")
    ax.set_title(f"Memory of one training step by category: {model}, batch {tokens} tokens")
    return finish_bars(fig, ax, folder, "memory_breakdown")


def finish_bars(fig: Any, ax: Any, folder: Path, stem: str) -> list[Path]:
    """A horizontal bar chart's grid, legend and files (PNG, and SVG without a date so it
    regenerates byte for byte); the paths written."""
    import matplotlib.pyplot as plt

    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight",
                    metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths


def train_once(args: list[str], runs_dir: Path, nproc: int = 1) -> dict[str, Any]:
    """Train one configuration in fresh processes (torchrun for several); its record, or
    RuntimeError if it failed."""
    head = [sys.executable] if nproc == 1 else [
        str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*head, "-m", "experiments.train", *args, f"runs_dir={runs_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    records = sorted(runs_dir.glob(f"*/{R.RECORD_FILE}"))
    if proc.returncode != 0 or not records:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}")
    return json.loads(records[-1].read_text())


def _pop_option(argv: list[str], name: str) -> str | None:
    if name not in argv:
        return None
    i = argv.index(name)
    value = argv[i + 1]
    del argv[i:i + 2]
    return value


def main(argv: list[str] | None = None) -> int:
    """Run every row briefly, print the table and notes, write the CSV and the figure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = _pop_option(argv, "--out")
    reports = _pop_option(argv, "--reports")
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="memory-table-") as tmp:
        for i, (label, extra) in enumerate(run_list()):
            print(f"running {label} {' '.join(extra[1:])}".rstrip(), file=sys.stderr, flush=True)
            try:
                record = train_once([*BASE_ARGS, *argv, *extra], Path(tmp) / str(i))
                rows.append(row(record, label))
            except RuntimeError as exc:  # one broken method must not hide the others' rows
                failed.append(label)
                print(f"  {label} failed: {exc}", file=sys.stderr)
                if f"exit {EXIT_USER_ERROR}:" in str(exc):  # bad arguments: all runs would fail
                    return EXIT_USER_ERROR
    print(format_table(rows))
    print(notes(rows))
    runs_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("runs_dir=")), "")
    path = Path(out) if out else Path(runs_dir or Config().resolved_runs_dir()) / "memory_table.csv"
    write_csv(rows, path)
    figures = plot_breakdown(rows, R.reports_dir(reports)) if rows else []
    return report_written([path, *figures], failed)


def report_written(paths: list[Path], failed: list[str]) -> int:
    """Print what was written and what failed; the exit code (1 when a row failed)."""
    for path in paths:
        print(f"written: {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
