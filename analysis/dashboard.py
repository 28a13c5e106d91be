"""One self-contained HTML dashboard: the figures, the summary, and a sortable table of runs.

Run it:
    python -m analysis.dashboard              # $RUNS_DIR (./runs) -> $REPORTS_DIR/dashboard.html
    python -m analysis.dashboard runs/ --reports-dir /tmp/reports
    make dashboard

The file embeds everything (PNG figures as data URIs, inline CSS and JavaScript), so it opens
from disk with no server and no network. Click a run (or press Enter on it) for its config and
provenance.
"""

from __future__ import annotations

import base64
import html
import io
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from analysis import cli, results
from analysis.plots import figures
from analysis.style import RC, human_bytes, human_count, method_color
from analysis.summary import COLUMNS as SUMMARY_COLUMNS
from analysis.summary import notes, status_counts, summary_rows

CAPTIONS = {
    "accuracy_vs_params": "Test accuracy against trainable parameters (log scale); "
                          "error bars are 95% t-intervals over seeds.",
    "accuracy_vs_memory": "Test accuracy against measured peak memory; the dashed line is the "
                          "Pareto frontier (no configuration uses less memory for more accuracy).",
    "memory_breakdown": "Memory by category from the ledger, with the formula's prediction and "
                        "the measured device peak marked.",
    "time_throughput": "Time to fit (training loop plus one-off preparation) and training "
                       "throughput.",
    "val_curves": "Validation accuracy over optimizer steps, mean over seeds with a ±1 std band.",
    "accuracy_vs_rank": "Test accuracy against LoRA rank, other methods' best configurations "
                        "as reference lines.",
}
# (header, column, kind): kind picks the cell's formatting and how the column sorts.
RUN_COLUMNS = (
    ("run", "run_id", "text"), ("method", "method", "method"), ("configuration", "label", "text"),
    ("seed", "config.seed", "int"), ("status", "status", "text"),
    ("test acc (%)", results.ACCURACY, "pct"), ("best val acc (%)", "metrics.val/best_accuracy",
                                                "pct"),
    ("trainable", "params.trainable", "count"), ("% of total", "pct_trainable", "share"),
    ("peak memory", results.MEASURED, "bytes"), ("predicted", "memory.predicted_bytes", "bytes"),
    ("fit time (s)", "time.fit_s", "secs"), ("ex/s", "time.train_samples_per_s", "int"),
    ("steps", "steps", "int"), ("started (UTC)", "started_at", "text"),
    ("commit", "env.git_commit", "commit"),
)
# Detail sections: title -> column prefixes shown in it.
SECTIONS = (
    ("Configuration", ("config.",)), ("Method", ("method_info.",)), ("Model", ("model.",)),
    ("Data", ("data.",)), ("Parameters", ("params.",)), ("Metrics", ("metrics.",)),
    ("Memory", ("memory.",)), ("Time", ("time.",)),
    ("Provenance", ("env.", "config_hash", "experiment", "record_file", "started_at",
                    "finished_at", "error", "source", "schema")),
)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and dicts: present
        return False


def cell(value: Any, kind: str) -> tuple[str, str]:
    """(display text, sort key) for one table cell."""
    if _missing(value):
        return "—", ""
    if kind == "pct":
        return f"{100 * float(value):.1f}", repr(float(value))
    if kind == "count":
        return human_count(float(value)), repr(float(value))
    if kind == "bytes":
        return human_bytes(float(value)), repr(float(value))
    if kind == "share":
        v = float(value)
        return (f"{v:.3g}%" if v < 10 else f"{v:.1f}%"), repr(v)
    if kind == "secs":
        return f"{float(value):.2f}", repr(float(value))
    if kind == "int":
        return f"{float(value):,.0f}", repr(float(value))
    if kind == "commit":
        return str(value)[:8], str(value)
    return str(value), str(value)


def figure_png(fig: Figure, dpi: int = 150) -> str:
    """A figure as a base64 PNG data URI."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with plt.rc_context(RC):
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def run_table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The runs with the derived columns the table shows (label, measured memory, % trainable)."""
    df = results.with_derived(df.copy())
    labels = results.config_labels(df) if not df.empty else {}
    df["label"] = df["config_hash"].map(labels)
    if {"params.trainable", "params.total"} <= set(df.columns):
        df["pct_trainable"] = 100 * df["params.trainable"] / df["params.total"]
    return df


def _details(row: pd.Series) -> str:
    """The details row's content: one key/value table per record section."""
    blocks = []
    for title, prefixes in SECTIONS:
        items = []
        for col, value in row.items():
            if col in ("val_history",) or not any(col == p or col.startswith(p)
                                                   for p in prefixes) or _missing(value):
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
                color = method_color(str(row["method"]))
                text_html = (f"<span class='dot' style='background:{color}'></span>"
                             f"{html.escape(text)}")
            else:
                text_html = html.escape(text)
            tds.append(f"<td data-v='{html.escape(key, quote=True)}'>{text_html}</td>")
        attrs = (f"class='run status-{html.escape(str(row.get('status')))}' tabindex='0' "
                 f"aria-expanded='false' data-method='{html.escape(str(row['method']))}' "
                 f"data-status='{html.escape(str(row.get('status')))}'")
        body.append(f"<tr {attrs}>{''.join(tds)}</tr>")
        body.append(f"<tr class='details' hidden><td colspan='{len(RUN_COLUMNS)}'>"
                    f"<div class='pin'>{_details(row)}</div></td></tr>")
    return (f"<div class='scroll'><table id='runs'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _options(values: list[str], everything: str) -> str:
    opts = [f"<option value=''>{everything}</option>"]
    opts += [f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values]
    return "".join(opts)


def summary_table(agg: pd.DataFrame) -> str:
    """The per-configuration comparison (the same cells as reports/summary.md)."""
    rows = summary_rows(agg)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in SUMMARY_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in SUMMARY_COLUMNS)
                   + "</tr>" for r in rows)
    return (f"<div class='scroll'><table class='summary'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def build_html(df: pd.DataFrame, source: str = "", figs: dict[str, Figure] | None = None) -> str:
    """The whole dashboard page for the runs in `df` (figures drawn from them unless given)."""
    import matplotlib.pyplot as plt

    fin = results.finished(df)
    agg = results.aggregate(fin)
    own = figs is None
    figs = figures(agg) if own else figs
    images = []
    for name, fig in figs.items():
        caption = html.escape(CAPTIONS.get(name, name))
        images.append(f"<figure id='fig-{name}'><img alt='{html.escape(name)}' "
                      f"src='{figure_png(fig)}'><figcaption>{caption}</figcaption></figure>")
        if own:
            plt.close(fig)
    table = run_table_frame(df)
    methods = sorted(table["method"].dropna().unique())
    statuses = sorted(table["status"].dropna().astype(str).unique())
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes(df))
    return PAGE.format(
        title="tunebench dashboard", stamp=stamp, source=html.escape(source or "run records"),
        counts=html.escape(f"{len(df)} runs ({status_counts(df)}), {len(agg)} configurations"),
        summary=summary_table(agg), notes=notes_html, runs=runs_table(table), total=len(table),
        methods=_options(methods, "all methods"), statuses=_options(statuses, "any status"),
        figures="".join(images) or "<p>No finished runs to plot.</p>", css=CSS, js=JS)


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


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th:first-child,td:first-child,#runs td:nth-child(2),#runs td:nth-child(3){text-align:left}
#runs thead th{position:sticky;top:0;background:#f4f4f4;cursor:pointer;user-select:none}
#runs th[aria-sort=ascending]::after{content:' \\25B2'}
#runs th[aria-sort=descending]::after{content:' \\25BC'}
tr.run{cursor:pointer}tr.run:hover,tr.run:focus{background:#eef5ff;outline:none}
tr.run.open{background:#e3eefc}tr.status-failed td{color:#b00020}
tr.details>td{background:#fafafa;text-align:left;white-space:normal}
.block{display:inline-block;vertical-align:top;margin:6px 18px 6px 0;max-width:440px}
.block h4{margin:4px 0}.kv th,.kv td{text-align:left;font-size:12px;border:none;padding:1px 6px;
white-space:normal;word-break:break-all}.kv th{color:#555;font-weight:600;white-space:nowrap}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px}
.controls{margin:8px 0;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.controls input{width:280px;padding:4px}#shown{color:#555}
.scroll{overflow-x:auto;max-width:100%}
.pin{position:sticky;left:8px;max-width:calc(100vw - 80px)}
figure{display:inline-block;margin:10px 16px 20px 0;width:calc(50% - 20px);min-width:520px;
vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:13px}
"""

JS = """
(function () {
  var table = document.getElementById('runs'), tbody = table.tBodies[0];
  var q = document.getElementById('filter'), fm = document.getElementById('method');
  var fs = document.getElementById('status'), shown = document.getElementById('shown');
  function pairs() {
    return Array.prototype.map.call(tbody.querySelectorAll('tr.run'),
      function (r) { return [r, r.nextElementSibling]; });
  }
  function toggle(r) {
    var d = r.nextElementSibling, open = d.hidden;
    d.hidden = !open; r.classList.toggle('open', open);
    r.setAttribute('aria-expanded', open ? 'true' : 'false');
  }
  tbody.addEventListener('click', function (e) {
    var r = e.target.closest('tr.run'); if (r) toggle(r);
  });
  tbody.addEventListener('keydown', function (e) {
    var r = e.target.closest('tr.run');
    if (r && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); toggle(r); }
  });
  var sortIdx = -1, asc = true;
  function sortBy(th) {
    var idx = th.cellIndex, num = th.dataset.type === 'num';
    asc = sortIdx === idx ? !asc : true; sortIdx = idx;
    var rows = pairs();
    rows.sort(function (a, b) {
      var x = a[0].cells[idx].dataset.v, y = b[0].cells[idx].dataset.v;
      if (x === '' || y === '') { return x === y ? 0 : (x === '' ? 1 : -1); }  // blanks last
      var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (p) { tbody.appendChild(p[0]); tbody.appendChild(p[1]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  }
  table.tHead.addEventListener('click', function (e) {
    var th = e.target.closest('th'); if (th) sortBy(th);
  });
  table.tHead.addEventListener('keydown', function (e) {
    var th = e.target.closest('th'); if (th && e.key === 'Enter') sortBy(th);
  });
  function filter() {
    var text = q.value.trim().toLowerCase(), n = 0, all = pairs();
    all.forEach(function (p) {
      var r = p[0], d = p[1];
      var ok = (!fm.value || r.dataset.method === fm.value) &&
               (!fs.value || r.dataset.status === fs.value) &&
               (!text || (r.textContent + ' ' + d.textContent).toLowerCase().indexOf(text) >= 0);
      r.hidden = !ok; if (!ok) { d.hidden = true; r.classList.remove('open'); }
      if (ok) n++;
    });
    shown.textContent = n + ' of ' + all.length + ' runs shown';
  }
  [q, fm, fs].forEach(function (el) { el.addEventListener('input', filter); });
  filter();
  document.body.dataset.ready = '1';  // lets a headless test tell that the script ran
  window.addEventListener('load', function () {  // and how many figures the browser decoded
    document.body.dataset.images = String(Array.prototype.filter.call(document.images,
      function (im) { return im.complete && im.naturalWidth > 0; }).length);
  });
})();
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>
<h1>{title}</h1>
<p class="meta">Generated {stamp} from {source}: {counts}.</p>
<h2>Summary (finished runs, one row per configuration)</h2>
{summary}
<ul class="meta">{notes}</ul>
<h2>Runs</h2>
<div class="controls">
<input id="filter" type="search" placeholder="filter: any text in a run or its config"
 aria-label="filter runs">
<select id="method" aria-label="method">{methods}</select>
<select id="status" aria-label="status">{statuses}</select>
<span id="shown">{total} runs</span></div>
{runs}
<h2>Figures</h2>
{figures}
<script>{js}</script>
</body></html>
"""


if __name__ == "__main__":
    sys.exit(main())
