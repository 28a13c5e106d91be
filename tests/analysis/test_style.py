"""Colours: one per method of the registry's order, stable for newcomers, readable as text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from matplotlib.colors import to_rgb

from analysis import style
from experiments.contract import record as R

REPO = Path(__file__).resolve().parents[2]


def test_every_method_has_its_own_colour() -> None:
    colors = [style.method_color(m) for m in R.METHOD_ORDER]
    assert len(set(colors)) == len(R.METHOD_ORDER) == 9
    assert set(style.METHOD_COLORS) == set(R.METHOD_ORDER)


def test_unknown_methods_get_a_stable_spare_colour() -> None:
    known = set(style.METHOD_COLORS.values())
    for name in ("vera", "adalora", "loha"):
        color = style.method_color(name)
        assert color not in known and color == style.method_color(name)
    # Not the sum of the letters: anagrams need not share a colour.
    assert len({style.method_color(n) for n in ("abc", "cab", "bca", "acb")}) > 1


def test_light_colours_are_darkened_for_text() -> None:
    assert style.method_text_color("head") == style.method_color("head")
    dark = to_rgb(style.method_text_color("ia3"))  # Okabe-Ito yellow, unreadable on white
    assert max(dark) < 0.6 and style.method_text_color("ia3") != style.method_color("ia3")


def test_analysis_imports_no_torch() -> None:
    code = ("import sys, analysis.results, analysis.plots, analysis.summary, analysis.dashboard, "
            "analysis.paired, analysis.cli, analysis.style; "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert not [m for m in sys.modules if m.startswith('experiments.') and m not in "
            "('experiments.contract', 'experiments.contract.record', "
            "'experiments.contract.units', 'experiments.contract.tasks')], "
            "'more of the harness was imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
