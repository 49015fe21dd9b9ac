"""Charts sent as photos: training results and metrics over time (PNG bytes).

Drawn with matplotlib's object API (``Figure``, no ``pyplot`` and its global state), so
charts can be drawn in any thread. Renderers do not call these functions themselves: they
attach them to a ``FilePart`` (``draw=``), and the sender draws them in its chart thread,
never on the thread that every handler's database call shares.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

ACCENT = "#2AABEE"  # Telegram blue
DPI = 110


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _cut(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def feature_importance(items: Sequence[dict[str, Any]], title: str = "Feature importance") -> bytes:
    """Horizontal bars, most important on top. ``items``: [{"feature", "importance"}]."""
    top = list(items)[:15][::-1]
    fig = Figure(figsize=(6.4, 0.35 * len(top) + 1.4))
    ax = fig.subplots()
    ax.barh([_cut(str(i["feature"])) for i in top], [float(i["importance"]) for i in top], color=ACCENT)
    ax.set_title(title)
    ax.set_xlabel("share of importance")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def confusion_matrix(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> bytes:
    size = len(labels)
    fig = Figure(figsize=(1.0 + 0.6 * size + 2, 0.6 * size + 2))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(size), [_cut(str(label), 12) for label in labels], rotation=45, ha="right")
    ax.set_yticks(range(size), [_cut(str(label), 12) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix (held-out rows)")
    peak = max((max(row) for row in matrix), default=0) or 1
    if size <= 12:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _png(fig)


def predicted_vs_actual(points: Sequence[Sequence[float]]) -> bytes:
    predicted = [float(p[0]) for p in points]
    actual = [float(p[1]) for p in points]
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.scatter(actual, predicted, s=12, alpha=0.6, color=ACCENT)
    low, high = min(actual + predicted, default=0), max(actual + predicted, default=1)
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs actual (held-out rows)")
    ax.legend(loc="upper left")
    return _png(fig)


def metrics_over_time(series: Sequence[dict[str, Any]], title: str = "Metrics") -> bytes:
    """``series``: [{"step", "values": {name: number}}] → one line per metric (at most 6)."""
    names: list[str] = []
    for point in series:
        for name in point.get("values", {}):
            if name not in names:
                names.append(name)
    names = names[:6]
    fig = Figure(figsize=(6.4, 2.0 * len(names) + 0.6))
    axes = fig.subplots(len(names), 1, squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names, strict=True):
        steps = [p["step"] for p in series if name in p.get("values", {})]
        values = [p["values"][name] for p in series if name in p.get("values", {})]
        ax.plot(steps, values, color=ACCENT, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_ylabel(_cut(name, 16))
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    return _png(fig)
