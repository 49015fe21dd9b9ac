"""Charts sent as photos: training results and metrics over time (PNG bytes).

Drawn with matplotlib's object API (``Figure``, no ``pyplot`` and its global state), so
charts can be drawn in any thread. Renderers do not call these functions themselves: they
attach them to a ``FilePart`` (``draw=``), and the sender draws them in its chart thread,
never on the thread that every handler's database call shares.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.text import Text

logger = logging.getLogger(__name__)

ACCENT = "#2AABEE"  # Telegram blue
DPI = 110

# Fonts --------------------------------------------------------------------------------------
# Column names and process names can be in any script. matplotlib (3.6+) falls back glyph by
# glyph along ``font.family``: these families, in order, wherever they are installed (Noto
# covers most scripts; DejaVu is matplotlib's own). A character none of them has is replaced
# by a visible U+FFFD "�" (or "?"), never drawn as an empty box. Colour emoji fonts (bitmaps)
# cannot be drawn by Agg and are not in the chain; "Last Resort" draws only boxes.
FONT_CHAIN = (
    "DejaVu Sans",
    "Noto Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK KR",
    "Noto Sans CJK TC",
    "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Devanagari",
    "Noto Sans Thai",
    "Noto Sans Symbols",
    "Noto Sans Symbols 2",
    "Noto Emoji",
    "Noto Sans Math",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "STIXGeneral",
)
REPLACEMENT = "\ufffd"

F = TypeVar("F", bound=Callable[..., bytes])


@functools.cache
def font_families() -> tuple[str, ...]:
    """The families of FONT_CHAIN installed here, in order (DejaVu Sans ships with matplotlib)."""
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return tuple(name for name in FONT_CHAIN if name in installed) or ("DejaVu Sans",)


@functools.cache
def _coverage() -> frozenset[int]:
    """Every code point some installed font of the chain can draw."""
    points: set[int] = set()
    for family in font_families():
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
            points.update(FT2Font(path).get_charmap())
        except Exception:  # an unreadable font file: the others still count
            logger.warning("cannot read the font %s; charts fall back to the others", family, exc_info=True)
    return frozenset(points)


def drawable(text: str) -> str:
    """``text`` with each character no installed font can draw replaced by a visible "�"."""
    covered = _coverage()
    mark = REPLACEMENT if ord(REPLACEMENT) in covered else "?"
    return "".join(ch if ord(ch) in covered or ch in "\n\t" else mark for ch in text)


def _with_fonts(draw: F) -> F:
    """Draw with the font fallback chain (a context: matplotlib's global settings are left alone)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> bytes:
        with matplotlib.rc_context({"font.family": list(font_families())}):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _png(fig: Figure) -> bytes:
    for text in fig.findobj(Text):  # titles and axis labels (tick labels are cut with _cut)
        assert isinstance(text, Text)
        label = text.get_text()
        if label:
            text.set_text(drawable(label))
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _cut(label: str, width: int = 28) -> str:
    label = drawable(label)
    return label if len(label) <= width else label[: width - 1] + "…"


@_with_fonts
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


@_with_fonts
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


@_with_fonts
def predicted_vs_actual(points: Sequence[Sequence[float]]) -> bytes:
    """``points``: bins ``[mean predicted, mean actual, rows]`` in increasing actual order (the worker's
    form since issue 11), or raw ``[predicted, actual]`` pairs from older workers."""
    predicted = [float(p[0]) for p in points]
    actual = [float(p[1]) for p in points]
    binned = bool(points) and all(len(p) >= 3 for p in points)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    if binned:
        rows = [max(1.0, float(p[2])) for p in points]
        peak = max(rows)
        sizes = [20 + 140 * r / peak for r in rows]
        ax.plot(actual, predicted, color=ACCENT, linewidth=1, alpha=0.5)
        ax.scatter(actual, predicted, s=sizes, alpha=0.8, color=ACCENT, label=f"bins of held-out rows ({int(sum(rows))})")
    else:
        ax.scatter(actual, predicted, s=12, alpha=0.6, color=ACCENT)
    low, high = min(actual + predicted, default=0), max(actual + predicted, default=1)
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.set_xlabel("actual (mean per bin)" if binned else "actual")
    ax.set_ylabel("predicted (mean per bin)" if binned else "predicted")
    ax.set_title("Predicted vs actual (held-out rows)")
    ax.legend(loc="upper left")
    return _png(fig)


@_with_fonts
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
