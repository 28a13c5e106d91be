"""Direct labels for scatter points: each name beside its point, clear of the others.

Hand-written (greedy: each label takes the nearest free spot on rings around its point, with a
leader line when it had to move away) because adjustText, the usual library, is not a
dependency, and a legend of 17 entries in 8 shades is what direct labels replace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.transforms import Bbox

RINGS_PX = (7, 13, 20, 28, 38, 50, 64, 80, 100, 124)  # distances tried, nearest first
ANGLES = 16  # directions per ring
POINT_PX = 6  # half-size of the box a marker keeps free
LEADER_PX = 8  # a label further from its point than this gets a line to it


def _text_size(ax: Axes, text: str, fontsize: float) -> tuple[float, float]:
    """The text's width and height in display pixels."""
    probe = ax.text(0, 0, text, fontsize=fontsize)
    box = probe.get_window_extent(ax.figure.canvas.get_renderer())
    probe.remove()
    return box.width + 2, box.height + 1


def _candidates(x: float, y: float, w: float, h: float) -> list[tuple[float, float]]:
    """Box centres around (x, y): right and left of the point first, then the rest."""
    out = []
    for r in RINGS_PX:
        for k in range(ANGLES):
            a = 2 * math.pi * k / ANGLES
            dx, dy = math.cos(a), math.sin(a)
            # The box's nearest side sits r pixels from the point.
            out.append((x + dx * (r + w / 2), y + dy * (r + h / 2), abs(dy)))
    return [(cx, cy) for cx, cy, _ in sorted(out, key=lambda c: (
        math.hypot(c[0] - x, c[1] - y) + 12 * c[2]))]


def _overlap(box: Bbox, others: list[Bbox]) -> float:
    """The area box shares with the others."""
    total = 0.0
    for o in others:
        dx = min(box.x1, o.x1) - max(box.x0, o.x0)
        dy = min(box.y1, o.y1) - max(box.y0, o.y0)
        if dx > 0 and dy > 0:
            total += dx * dy
    return total


def _spot(ax: Axes, xy: np.ndarray, w: float, h: float, taken: list[Bbox]) -> Bbox:
    """The first free box around the point inside the axes, else the least crowded one."""
    frame = ax.get_window_extent(ax.figure.canvas.get_renderer())
    best, best_cost = None, math.inf
    for cx, cy in _candidates(xy[0], xy[1], w, h):
        box = Bbox.from_bounds(cx - w / 2, cy - h / 2, w, h)
        if not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
                and box.y1 <= frame.y1):
            continue
        cost = _overlap(box, taken)
        if cost == 0:
            return box
        if cost < best_cost:
            best, best_cost = box, cost
    return best if best is not None else Bbox.from_bounds(xy[0] + 6, xy[1] - h / 2, w, h)


def label_points(ax: Axes, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str],
                 colors: Sequence[str], fontsize: float = 7.5) -> list:
    """Write each text beside its (x, y) in data coordinates; returns the annotations.

    Call it last, once the axes' limits and the figure's size are final: positions are worked
    out in pixels. Labels go in order of crowding (the point with the most neighbours first),
    so the crowded ones get the near spots.
    """
    fig = ax.figure
    fig.canvas.draw()  # settles constrained layout, so the pixel positions hold
    pts = ax.transData.transform(np.column_stack([xs, ys]))
    taken = [Bbox.from_bounds(px - POINT_PX, py - POINT_PX, 2 * POINT_PX, 2 * POINT_PX)
             for px, py in pts]
    near = [int(np.sum(np.hypot(*(pts - p).T) < 60)) for p in pts]
    made = []
    to_points = 72.0 / fig.dpi
    for i in sorted(range(len(pts)), key=lambda j: (-near[j], j)):
        w, h = _text_size(ax, texts[i], fontsize)
        box = _spot(ax, pts[i], w, h, taken)
        taken.append(box)
        (cx, cy), (px, py) = box.get_points().mean(axis=0), pts[i]
        gap_x = max(box.x0 - px, 0.0, px - box.x1)
        gap_y = max(box.y0 - py, 0.0, py - box.y1)
        far = math.hypot(gap_x, gap_y) > LEADER_PX
        arrow = ({"arrowstyle": "-", "color": "0.45", "linewidth": 0.7, "shrinkA": 1,
                  "shrinkB": 3} if far else None)
        note = ax.annotate(texts[i], (xs[i], ys[i]), xytext=((cx - px) * to_points,
                                                             (cy - py) * to_points),
                           textcoords="offset points", ha="center", va="center",
                           fontsize=fontsize, color=colors[i], arrowprops=arrow, zorder=6,
                           # A white ground keeps a label legible where error bars cross it.
                           bbox={"boxstyle": "square,pad=0.05", "facecolor": "white",
                                 "edgecolor": "none", "alpha": 0.85})
        note.set_in_layout(False)  # inside the axes: the layout must not move for it
        made.append(note)
    return made
