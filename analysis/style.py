"""Shared look of every figure: one colour per method, byte and count axes, paper-like defaults."""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, Locator, MaxNLocator

from analysis.configs import number
from experiments.contract.units import BYTE_UNITS
from experiments.contract.units import human_bytes as _format_bytes

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and in greyscale print.
# Its nine colours give each method of experiments.contract.record.METHOD_ORDER its own. The
# first five methods keep the colours they had before the registry grew; bitfit and ia3, which
# train least, take sky blue (beside the head's blue) and yellow; prefix grey, beside
# soft_prompt; dora black, LoRA's variant. Figures draw their own guides (frontier,
# predictions) in grey, not black.
METHOD_COLORS = {
    "head": "#0072B2", "bitfit": "#56B4E9", "ia3": "#F0E442", "embedding": "#E69F00",
    "soft_prompt": "#009E73", "prefix": "#999999", "lora": "#D55E00", "dora": "#000000",
    "full": "#CC79A7",
}
# Methods not in the registry's order: Paul Tol's muted palette (also colour-blind safe), so a
# newcomer never takes a known method's colour.
_SPARE = ("#882255", "#44AA99", "#117733", "#332288", "#AA4499", "#88CCEE", "#DDCC77", "#999933")
P = ParamSpec("P")
R = TypeVar("R")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", ":", "-.")


RC = {
    "figure.dpi": 100, "savefig.dpi": 200, "font.size": 10, "axes.titlesize": 11,
    "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "grid.linewidth": 0.6, "svg.fonttype": "none",
    # A fixed salt makes the SVG's element ids (random by default) the same on every run, so a
    # committed figure regenerates byte-for-byte.
    "svg.hashsalt": "tunebench",
}


def method_color(method: str) -> str:
    """The method's colour, the same in every figure and in the dashboard."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    # By a stable hash of the name, not by arrival order: a method keeps its colour whichever
    # other runs are loaded (crc32, unlike hash(), is the same in every process).
    return _SPARE[zlib.crc32(method.encode()) % len(_SPARE)]


def method_text_color(method: str) -> str:
    """The method's colour for text on white: a light one (ia3's yellow) darkened to be read."""
    r, g, b = to_rgb(method_color(method))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b  # sRGB weights, close enough for a choice
    if luminance < 0.6:
        return method_color(method)
    return to_hex((0.6 * r, 0.6 * g, 0.6 * b))


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; a missing value -> '—'."""
    value = number(n)
    return "—" if math.isnan(value) else _format_bytes(value)


def human_count(n: float | None) -> str:
    """1_234_567 -> '1.23M' (parameter counts); a missing value -> '—'."""
    value = number(n)
    if math.isnan(value):
        return "—"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.0f}"


def _unit_for(vmax: float, headroom: float = 1.0) -> tuple[float, str]:
    """The largest binary unit that vmax / headroom still reaches."""
    v = vmax / headroom
    k = 0 if v < 1024 else min(int(math.log(v, 1024)), len(BYTE_UNITS) - 1)
    return 1024.0**k, BYTE_UNITS[k]


# A linear axis up to 1.1 GiB reads better as 0-1000 MiB than as 0.2, 0.4 ... GiB.
_LINEAR_HEADROOM = 2.0


class BytesLocator(Locator):
    """Linear ticks at round numbers of the axis's binary unit (10, 20, 30 MiB, not 19.1 MiB)."""

    def __init__(self, nbins: int = 6) -> None:
        self._inner = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10])

    def __call__(self) -> list[float]:
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        """Ticks between vmin and vmax, in bytes."""
        scale, _ = _unit_for(max(abs(vmin), abs(vmax)), _LINEAR_HEADROOM)
        return [t * scale for t in self._inner.tick_values(vmin / scale, vmax / scale)]


class Log2BytesLocator(Locator):
    """Log-axis ticks at powers of two (1, 4, 16 MiB ...), at most `max_ticks` of them."""

    def __init__(self, max_ticks: int = 8) -> None:
        self.max_ticks = max_ticks

    def __call__(self) -> list[float]:
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        """Powers of two between vmin and vmax, thinned to a round stride."""
        lo, hi = math.floor(math.log2(max(vmin, 1))), math.ceil(math.log2(max(vmax, 2)))
        for stride in (1, 2, 5, 10, 20):
            ticks = [2.0**j for j in range(lo, hi + 1) if j % stride == 0]
            if len(ticks) <= self.max_ticks:
                return ticks
        return ticks


class BytesFormatter(Formatter):
    """Tick labels in binary units: one unit for the whole axis on linear, per tick on log."""

    def __init__(self, log: bool = False) -> None:
        self.log = log

    def __call__(self, x: float, pos: int | None = None) -> str:
        if self.log:
            scale, unit = _unit_for(abs(x))
        else:
            scale, unit = _unit_for(max(abs(v) for v in self.axis.get_view_interval()),
                                    _LINEAR_HEADROOM)
        return f"{x / scale:g} {unit}" if x else "0"


class CountFormatter(Formatter):
    """Tick labels for parameter counts: 1k, 10k, 1M."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return human_count(x)


def bytes_axis(axis: matplotlib.axis.Axis, log: bool = False,
               max_ticks: int | None = None) -> None:
    """Label an axis's ticks in KiB/MiB/GiB (powers of two when logarithmic), max_ticks or so."""
    from matplotlib.ticker import NullFormatter, NullLocator

    if log:
        axis.set_major_locator(Log2BytesLocator(max_ticks or 8))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(BytesLocator((max_ticks or 7) - 1))
    axis.set_major_formatter(BytesFormatter(log=log))


def paper_style(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function under the paper rc style (text takes its size when created)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with plt.rc_context(RC):
            result = fn(*args, **kwargs)
            interactive = matplotlib.is_interactive()
        # Jupyter's inline backend loads with the first figure and turns interactive mode on;
        # rc_context would undo that on exit and later figures would never be shown.
        matplotlib.interactive(interactive)
        return result

    return wrapper


def new_figure(width: float = 6.4, height: float = 4.0, ncols: int = 1,
               sharey: bool = False, nrows: int = 1) -> tuple[Figure, list]:
    """A figure with constrained layout, which keeps labels, titles and legends from overlapping;
    its nrows x ncols axes listed row by row."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained",
                             squeeze=False, sharey=sharey)
    return fig, list(axes.flat)


def save_figure(fig: Figure, out_dir: Path, name: str,
                formats: Iterable[str] = ("png", "svg")) -> list[Path]:
    """Write the figure as `out_dir/name.<fmt>` for each format; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context(RC):
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, format=fmt, bbox_inches="tight",
                        metadata={"Date": None} if fmt == "svg" else None)
            paths.append(path)
    return paths
