"""One self-contained HTML dashboard: the figures, the summary, paired tests, and a table of runs.

Run it:
    python -m analysis.dashboard              # $RUNS_DIR (./runs) -> $REPORTS_DIR/dashboard.html
    python -m analysis.dashboard runs/ --reports-dir /tmp/reports
    make dashboard

The page is analysis/templates/dashboard.html filled in, with the style (dashboard.css), the
script (dashboard.js) and the PNG figures (data URIs) inlined, so it opens from disk with no
server and no network. Click a run (or press Enter on it) for its config and provenance.
"""

from __future__ import annotations

import base64
import html
import io
import math
import struct
import sys
import time
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from analysis import cli, configs, orderings, paired, results
from analysis.configs import is_missing, number
from analysis.plots import figures, unmeasured
from analysis.style import RC, human_bytes, human_count, method_color
from analysis.summary import COLUMNS as SUMMARY_COLUMNS
from analysis.summary import duplicate_notes, notes, status_counts, summary_rows
from experiments.contract import record as R

CAPTIONS = {
    "accuracy_vs_params": "Test accuracy against trainable parameters (log scale), each "
                          "configuration named beside its point; error bars are 95% t-intervals "
                          "over seeds.",
    "accuracy_vs_memory": "Test accuracy against the measured peak of a training step (live "
                          "tensor bytes; horizontal bars: the range over seeds). The dashed "
                          "line is the Pareto frontier among configurations with the usual "
                          "number of seeds (no such configuration uses less memory for more "
                          "accuracy); a point marked n=1 is one seed and is not on it.",
    "accuracy_vs_time": "Test accuracy against time to fit (training loop plus one-off "
                        "preparation), with the Pareto frontier among configurations with the "
                        "usual number of seeds.",
    "memory_breakdown": "Memory by category at the measured peak (or, for older records, the "
                        "ledger's counts), with the formula's prediction and the measured step "
                        "peak marked.",
    "time_throughput": "Time to fit (training loop plus one-off preparation) and training "
                       "throughput.",
    "val_curves": "Validation accuracy by epoch, one panel per method, mean over seeds with a "
                  "±1 std band.",
    "accuracy_vs_rank": "Test accuracy against LoRA rank, with the best head and full "
                        "fine-tuning configurations as reference lines.",
}
# (header, column, kind): kind picks the cell's formatting and how the column sorts.
RUN_COLUMNS = (
    ("run", R.RUN_ID, "text"), ("method", R.METHOD, "method"), ("configuration", "label", "text"),
    ("seed", results.SEED, "int"), ("status", R.STATUS, "text"),
    ("test acc (%)", results.ACCURACY, "pct"), ("best val acc (%)", results.VAL_BEST, "pct"),
    ("trainable", results.TRAINABLE, "count"), ("% of total", "pct_trainable", "share"),
    ("measured peak", results.MEASURED, "bytes"), ("predicted", results.PREDICTED, "bytes"),
    # Process-level figures, named for what they are: neither is the step's peak.
    ("CUDA max allocated", results.CUDA_MAX, "bytes"),
    ("RSS growth (approx.)", results.RSS_GROWTH, "bytes"),
    ("fit time (s)", results.FIT_S, "secs"), ("ex/s", results.SAMPLES_PER_S, "int"),
    ("steps", R.STEPS, "int"), ("started (UTC)", R.STARTED_AT, "text"),
    ("commit", results.GIT_COMMIT, "commit"),
)
# Detail sections: title -> column prefixes shown in it.
SECTIONS = (
    ("Configuration", (f"{R.CONFIG}.",)), ("Method", (f"{R.METHOD_INFO}.",)),
    ("Model", (f"{R.MODEL}.",)), ("Data", (f"{R.DATA}.",)), ("Parameters", (f"{R.PARAMS}.",)),
    ("Metrics", (f"{R.METRICS}.",)), ("Memory", (f"{R.MEMORY}.",)), ("Time", (f"{R.TIME}.",)),
    ("Provenance", (f"{R.ENV}.", R.CONFIG_HASH, R.EXPERIMENT, results.RECORD_FILE, R.STARTED_AT,
                    R.FINISHED_AT, R.ERROR, results.SOURCE, R.SCHEMA_KEY)),
)
FIGURE_DPI = 200  # twice the figures' 100 dpi (style.RC): shown at half, crisp on dense screens


@cache
def template(name: str) -> str:
    """A file of analysis/templates (read from the installed package, not the working folder)."""
    return resources.files("analysis").joinpath("templates", name).read_text(encoding="utf-8")


def cell(value: Any, kind: str) -> tuple[str, str]:
    """(display text, sort key) for one table cell."""
    if is_missing(value):
        return "—", ""
    if kind == "commit":
        return str(value)[:8], str(value)
    if kind in ("text", "method"):
        return str(value), str(value)
    v = number(value)
    if math.isnan(v):
        return "—", ""
    text = {"pct": f"{100 * v:.1f}", "count": human_count(v), "bytes": human_bytes(v),
            "share": f"{v:.3g}%" if v < 10 else f"{v:.1f}%", "secs": f"{v:.2f}",
            "int": f"{v:,.0f}"}[kind]
    return text, repr(v)


def figure_png(fig: Figure, dpi: int = FIGURE_DPI) -> tuple[str, int, int]:
    """A figure as a base64 PNG data URI, with its pixel width and height."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with plt.rc_context(RC):
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    data = buf.getvalue()
    width, height = struct.unpack(">II", data[16:24])  # the PNG header's IHDR chunk
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), width, height


def run_table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The runs with the derived columns the table shows (label, process memory, % trainable)."""
    df = results.with_derived(df.copy())
    labels = configs.config_labels(df) if not df.empty else {}
    df["label"] = df[R.CONFIG_HASH].map(labels)
    if {results.TRAINABLE, results.TOTAL} <= set(df.columns):
        df["pct_trainable"] = 100 * df[results.TRAINABLE] / df[results.TOTAL]
    return df


def _details(row: pd.Series) -> str:
    """The details row's content: one key/value table per record section."""
    blocks = []
    for title, prefixes in SECTIONS:
        items = []
        for col, value in row.items():
            if col == R.VAL_HISTORY or not any(col == p or col.startswith(p)
                                                   for p in prefixes) or is_missing(value):
                continue
            key = col
            for p in prefixes:
                if p.endswith(".") and col.startswith(p):
                    key = col[len(p):]
            text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            items.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(text)}</td></tr>")
        if items:
            blocks.append(f"<div class='block'><h4>{title}</h4><table class='kv'>"
                          + "".join(items) + "</table></div>")
    return "".join(blocks)


def runs_table(df: pd.DataFrame) -> str:
    """The runs table: one clickable row per run, followed by its hidden details row."""
    head = "".join(
        f"<th data-type='{'text' if kind in ('text', 'method', 'commit') else 'num'}' "
        f"tabindex='0' title='sort by {html.escape(name)}'>{html.escape(name)}</th>"
        for name, _, kind in RUN_COLUMNS)
    body = []
    for _, row in df.iterrows():
        tds = []
        for _, col, kind in RUN_COLUMNS:
            text, key = cell(row.get(col), kind)
            if kind == "method":
                color = method_color(str(row[R.METHOD]))
                text_html = (f"<span class='dot' style='background:{color}'></span>"
                             f"{html.escape(text)}")
            else:
                text_html = html.escape(text)
            tds.append(f"<td data-v='{html.escape(key, quote=True)}'>{text_html}</td>")
        status, method = html.escape(str(row.get(R.STATUS))), html.escape(str(row[R.METHOD]))
        attrs = (f"class='run status-{status}' tabindex='0' aria-expanded='false' "
                 f"data-method='{method}' data-status='{status}'")
        body.append(f"<tr {attrs}>{''.join(tds)}</tr>")
        body.append(f"<tr class='details' hidden><td colspan='{len(RUN_COLUMNS)}'>"
                    f"<div class='pin'>{_details(row)}</div></td></tr>")
    return (f"<div class='scroll'><table id='runs'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _options(values: list[str], everything: str) -> str:
    opts = [f"<option value=''>{everything}</option>"]
    opts += [f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values]
    return "".join(opts)


def html_table(rows: list[dict[str, Any]], columns: tuple[str, ...], cls: str) -> str:
    """A plain table of formatted cells (the summary's and the paired tests')."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return (f"<div class='scroll {cls}'><table class='{cls}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def summary_table(agg: pd.DataFrame) -> str:
    """The per-configuration comparison (the same cells as reports/summary.md)."""
    return html_table(summary_rows(agg), SUMMARY_COLUMNS, "summary")


def paired_section(df: pd.DataFrame, agg: pd.DataFrame) -> str:
    """The paired tests (analysis.paired: each configuration against full and the default
    LoRA, Holm-adjusted) as a table with its note and the orderings, or why there are none."""
    matrix = paired.comparisons(df, agg)
    shown = paired.default_family(matrix, agg)
    if not shown:
        return (f"<p class='meta'>No pair of configurations has per-example predictions "
                f"({R.PREDICTIONS_FILE}) on the same test split.</p>")
    lines = orderings.section(shown, orderings.seed_agreements(df, agg))[4:]
    items = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>"
                    for line in lines if line.startswith("- "))
    csv = "" if len(matrix) == len(shown) else f" (every pair: {paired.MATRIX_CSV} from make plots)"
    return (html_table(paired.table_rows(shown), paired.TABLE_COLUMNS, "paired")
            + f"<p class='meta notes'>{html.escape(paired.note(shown) + csv)}</p>"
            + f"<h3>Orderings the tests support</h3><ul class='meta notes'>{items}</ul>")


def _figure_html(name: str, fig: Figure, agg: pd.DataFrame) -> str:
    uri, width, height = figure_png(fig)
    caption = CAPTIONS.get(name, name)
    if name == "accuracy_vs_memory" and unmeasured(agg):
        caption += " Configurations whose records predate the measured step are not placed."
    if any(ax.get_xlabel() == "optimizer step" for ax in fig.axes):  # records without epochs
        caption = caption.replace("by epoch", "by optimizer step")
    # Shown at 100 pixels per inch, the figures' own dpi: text at its point size, crisp where
    # the screen has more pixels than CSS does.
    w, h = round(width * 100 / FIGURE_DPI), round(height * 100 / FIGURE_DPI)
    return (f"<figure id='fig-{name}'><img alt='{html.escape(name)}' src='{uri}' "
            f"width='{w}' height='{h}'>"
            f"<figcaption style='max-width:{w}px'>{html.escape(caption)}</figcaption></figure>")


def build_html(df: pd.DataFrame, source: str = "", figs: dict[str, Figure] | None = None) -> str:
    """The whole dashboard page for the runs in `df` (figures drawn from them unless given)."""
    import matplotlib.pyplot as plt

    fin = results.finished(df)
    agg = results.aggregate(fin)
    own = figs is None
    figs = figures(agg) if own else figs
    images = []
    for name, fig in figs.items():
        images.append(_figure_html(name, fig, agg))
        if own:
            plt.close(fig)
    table = run_table_frame(df)
    methods = sorted(table[R.METHOD].dropna().unique())
    statuses = sorted(table[R.STATUS].dropna().astype(str).unique())
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in [*notes(df),
                                                                  *duplicate_notes(df)])
    # Values are inserted as they are: `$` inside them (a config value, the script) is not read
    # as a placeholder, only the page's own `$name`s are.
    return Template(template("dashboard.html")).substitute(
        title="tunebench dashboard", stamp=stamp, source=html.escape(source or "run records"),
        counts=html.escape(f"{len(df)} runs ({status_counts(df)}), {len(agg)} configurations"),
        summary=summary_table(agg), notes=notes_html, paired=paired_section(fin, agg),
        runs=runs_table(table), total=len(table), methods=_options(methods, "all methods"),
        statuses=_options(statuses, "any status"),
        figures="".join(images) or "<p>No finished runs to plot.</p>",
        css=template("dashboard.css"), js=template("dashboard.js"))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: write reports/dashboard.html; exit 2 when there are no runs."""
    started = cli.start(argv, "python -m analysis.dashboard", __doc__)
    if started is None:
        return cli.EXIT_NO_RUNS
    args, df, where = started
    out = Path(args.reports_dir) / "dashboard.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_html(df, where), encoding="utf-8")
    print(f"{len(df)} runs from {where} -> {out} ({out.stat().st_size / 1e6:.1f} MB); "
          f"open file://{out.resolve()} in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
