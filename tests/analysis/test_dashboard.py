"""The HTML dashboard: self-contained, every run in the table, and rendered by a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from analysis import dashboard, results

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic", "--hide-scrollbars", "--window-size=1400,2000")


@pytest.fixture(scope="module")
def page(real_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dashboard of the real runs, written once for this module by the command line."""
    out = tmp_path_factory.mktemp("dashboard")
    assert dashboard.main([str(real_runs), "--reports-dir", str(out)]) == 0
    return out / "dashboard.html"


def test_page_is_self_contained_and_lists_every_run(page: Path, real_runs: Path) -> None:
    text = page.read_text()
    df = results.load_records(real_runs)
    assert text.count("<tr class='run ") == len(df) == 4
    assert text.count("<tr class='details' hidden>") == 4
    for run_id in df["run_id"]:
        assert run_id in text
    # Nothing fetched from anywhere: no external scripts, styles, fonts or images.
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", text)
    assert "<link" not in text and "@import" not in text and "<script src" not in text
    images = re.findall(r"<img [^>]*src='data:image/png;base64,", text)
    assert len(images) == 6  # every basic plot; no rank sweep in these runs
    # Each run's config and provenance are in its details row.
    assert "<h4>Configuration</h4>" in text and "<h4>Provenance</h4>" in text
    assert "tiny-bert" in text and df["env.git_commit"].iloc[0] in text


def test_page_comes_from_the_template_files(page: Path) -> None:
    text = page.read_text()
    for name in ("dashboard.html", "dashboard.css", "dashboard.js"):
        assert dashboard.template(name).strip()
    # The style and script are inlined whole; no placeholder is left unfilled.
    assert dashboard.template("dashboard.css").strip() in text
    assert dashboard.template("dashboard.js").strip() in text
    assert not re.search(r"\$\{?[a-z_]+\}?", text.replace(dashboard.template("dashboard.js"), ""))
    # The template files ship with the package (pip install, not only a source checkout).
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\n' in pyproject and '"templates/*"' in pyproject


def test_memory_columns_name_what_they_measure(real_runs: Path) -> None:
    """The step's measured peak is the peak; CPU RSS growth is shown, but never as a peak."""
    df = results.load_records(real_runs)
    old = df["method"] == "head"
    df.loc[old, results.MEASURED] = float("nan")  # records from before the measured step
    page = dashboard.build_html(df, "test")
    heads = re.findall(r"<th data-type='[a-z]+' tabindex='0' title='[^']*'>([^<]*)</th>", page)
    assert "measured peak" in heads and "RSS growth (approx.)" in heads
    assert not [h for h in heads if "peak" in h and h != "measured peak"]
    summary = re.search(r"<table class='summary'>.*?</table>", page, re.S).group(0)
    head = re.search(r"<tr><td>head</td>.*?</tr>", summary).group(0)
    assert head.count("<td>—</td>") == 1  # measured peak: no stand-in figure for the gap


def test_dollar_signs_in_records_are_not_template_fields(real_runs: Path) -> None:
    df = results.load_records(real_runs)
    df.loc[0, "config.name"] = "$title ${css} $$"
    page = dashboard.build_html(df, "test")
    assert "$title ${css} $$" in page


def test_cell_formatting_and_sort_keys() -> None:
    assert dashboard.cell(0.8123, "pct") == ("81.2", "0.8123")
    assert dashboard.cell("n/a", "bytes") == ("—", "")  # text where a number belongs
    assert dashboard.cell(3 * 2**20, "bytes") == ("3.0 MiB", repr(float(3 * 2**20)))
    assert dashboard.cell(None, "count") == ("—", "")
    assert dashboard.cell(float("nan"), "secs") == ("—", "")
    assert dashboard.cell("abcdef0123456789", "commit") == ("abcdef01", "abcdef0123456789")


def test_html_escapes_record_text(real_runs: Path) -> None:
    df = results.load_records(real_runs)
    df.loc[0, "config.name"] = "<script>alert(1)</script>"
    html = dashboard.build_html(df, "test")
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_no_runs_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert dashboard.main([str(tmp_path / "none"), "--reports-dir", str(tmp_path)]) == 2
    assert "no run records found" in capsys.readouterr().err
    assert not (tmp_path / "dashboard.html").exists()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"  # fresh: no shared state
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def test_dashboard_renders_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    dom = _browse(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # The DOM after the page's script ran: the script marks the body, counts rows and images.
    assert 'data-ready="1"' in html
    assert "4 of 4 runs shown" in html
    assert len(re.findall(r'<tr class="run ', html)) == 4
    assert 'data-images="6"' in html  # every embedded figure decoded by the browser

    shot = tmp_path / "dashboard.png"
    result = _browse(page, tmp_path, f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    image = mpimg.imread(shot)
    assert image.shape[:2] == (2000, 1400)
    rgb = (image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb[::13], axis=0)) > 200  # text, tables and plots, not a blank page
    assert (rgb.min(axis=1) < 200).mean() > 0.02  # a real share of the page is drawn on


# Drives the page as a user would (sort by a column twice, open a run, filter by method) and
# leaves the results on <body> for --dump-dom to show.
PROBE = """<script>
window.addEventListener('load', function () {
  var t = document.getElementById('runs'), out = {};
  var rows = function () { return Array.prototype.slice.call(t.querySelectorAll('tr.run')); };
  var th = Array.prototype.find.call(t.tHead.rows[0].cells,
    function (c) { return c.textContent.indexOf('fit time') === 0; });
  th.click(); th.click();
  out.sort = th.getAttribute('aria-sort');
  var v = rows().map(function (r) { return parseFloat(r.cells[th.cellIndex].dataset.v); });
  out.descending = v.every(function (x, i) { return i === 0 || v[i - 1] >= x; });
  out.pairs = rows().every(function (r) { return r.nextElementSibling.className === 'details'; });
  var first = rows()[0]; first.click();
  out.opened = !first.nextElementSibling.hidden;
  out.details = first.nextElementSibling.textContent.indexOf('git_commit') >= 0;
  var m = document.getElementById('method'); m.value = 'head';
  m.dispatchEvent(new Event('input'));
  out.shown = document.getElementById('shown').textContent;
  out.visible = rows().filter(function (r) { return !r.hidden; }).length;
  document.body.setAttribute('data-probe', JSON.stringify(out));
});
</script></body>"""


def test_sorting_details_and_filters_work_in_chromium(page: Path, tmp_path: Path) -> None:
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    dom = _browse(probed, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, "the probe script did not run"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe == {"sort": "descending", "descending": True, "pairs": True, "opened": True,
                     "details": True, "shown": "2 of 4 runs shown", "visible": 2}


# On a phone-sized window: what overflows, what stays in view, what a tap on a figure does.
NARROW_PROBE = """<script>
window.addEventListener('load', function () {
  var out = {}, doc = document.documentElement;
  out.pageFits = doc.scrollWidth <= window.innerWidth;
  var figs = Array.prototype.slice.call(document.querySelectorAll('figure'));
  out.framesFit = figs.every(function (f) { return f.getBoundingClientRect().width <= 390; });
  var img = figs[0].querySelector('img');
  out.drawnSize = img.getBoundingClientRect().width > 390;
  out.stacked = figs[1].getBoundingClientRect().top >= figs[0].getBoundingClientRect().bottom;
  img.click();
  out.tapFits = img.getBoundingClientRect().width <= 390;
  var first = document.querySelector('table.summary td');
  out.sticky = getComputedStyle(first).position;
  var box = document.querySelector('div.summary');
  out.tableScrolls = box.scrollWidth > box.clientWidth;
  parent.postMessage(JSON.stringify(out), '*');
});
</script></body>"""
# Headless Chromium keeps a window at least 500 px wide; an iframe gives the page exactly 390.
PHONE = """<!doctype html><html><body style="margin:0">
<iframe src="narrow.html" width="390" height="3000" style="border:0"></iframe>
<script>window.addEventListener('message', function (e) {
  document.body.setAttribute('data-probe', e.data); });</script></body></html>"""


def test_a_phone_sized_window_stacks_figures_and_keeps_the_method_column(
        page: Path, tmp_path: Path) -> None:
    (tmp_path / "narrow.html").write_text(page.read_text().replace("</body>", NARROW_PROBE))
    phone = tmp_path / "phone.html"
    phone.write_text(PHONE)
    dom = _browse(phone, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, "the probe script did not run"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe == {"pageFits": True, "framesFit": True, "drawnSize": True, "stacked": True,
                     "tapFits": True, "sticky": "sticky", "tableScrolls": True}
