"""Matplotlib charts of a profile, as PNG bytes (lazy import: matplotlib's
import and first figure cost ~0.65 s, paid only when a chart is drawn)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from epochmagic.model.vocabulary import PHASES

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile

COLORS = {
    "data": "#e4572e",
    "transfer": "#f3a712",
    "forward": "#29335c",
    "backward": "#4f6d7a",
    "optimizer": "#a8c686",
    "eval": "#669bbc",
    "other": "#b8b8b8",
}


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _cached(draw: Callable[[EpochProfile], bytes]) -> Callable[[EpochProfile], bytes]:
    """One PNG per profile and chart, kept in ``prof.rendered`` (never saved):
    the HTML report, the PNG fallback and the dashboard all show the same
    breakdown."""

    def wrapper(prof: EpochProfile) -> bytes:
        cache = prof.rendered
        if draw.__name__ not in cache:
            cache[draw.__name__] = draw(prof)
        return cache[draw.__name__]

    wrapper.__name__ = draw.__name__
    wrapper.__doc__ = draw.__doc__
    return wrapper


@_cached
def breakdown(prof: EpochProfile) -> bytes:
    """One horizontal bar: the epoch split into its seven phases."""
    fig, ax = _figure(8, 2.0)
    left = 0.0
    for name in PHASES:
        v = prof.phases.get(name, 0.0)
        if v <= 0:
            continue
        ax.barh([0], [v], left=left, color=COLORS[name], label=f"{name} {v:.2f} s")
        if v / (prof.wall_s or 1) > 0.06:
            ax.text(
                left + v / 2,
                0,
                f"{v / (prof.wall_s or 1):.0%}",
                ha="center",
                va="center",
                color="white",
                fontsize=9,
            )
        left += v
    ax.set_yticks([])
    ax.set_xlim(0, max(left, 1e-9))
    ax.set_xlabel("seconds of the measured epoch")
    ax.legend(ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.02), frameon=False)
    return _png(fig)


@_cached
def timeline(prof: EpochProfile, max_bars: int = 400) -> bytes:
    """Per-step stacked bars: warm-up, stalls and growth show at a glance."""
    fig, ax = _figure(8, 2.6)
    n = len(prof.step_phases)
    stride = max(1, -(-n // max_bars))
    xs = list(range(0, n, stride))
    bottom = [0.0] * len(xs)
    for name in PHASES:
        ys = [
            sum(prof.step_phases[j].get(name, 0.0) for j in range(i, min(n, i + stride)))
            / min(stride, n - i)
            * 1000
            for i in xs
        ]
        if any(ys):
            ax.bar(
                xs,
                ys,
                bottom=bottom,
                width=stride,
                color=COLORS[name],
                label=name,
                align="edge",
                linewidth=0,
            )
            bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set_xlabel("step" + (f" (mean of every {stride})" if stride > 1 else ""))
    ax.set_ylabel("ms")
    ax.legend(ncol=7, fontsize=7, loc="upper right", frameon=False)
    return _png(fig)


def comparison(base: EpochProfile, results: list[EpochProfile], labels: list[str]) -> bytes:
    """Epoch time of the baseline and each what-if, measured and predicted."""
    fig, ax = _figure(8, 0.5 + 0.45 * (len(results) + 1))
    names = ["baseline", *labels]
    times = [base.epoch_s or 0.0, *[(r.epoch_s or 0.0) for r in results]]
    colors = ["#29335c"] + ["#669bbc" if r.status == "ok" else "#cccccc" for r in results]
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, times, color=colors)
    for y, r in zip(ys[1:], results):
        pred = (r.predicted or {}).get("epoch_s")
        if pred:
            ax.plot([pred], [y], marker="|", markersize=14, color="#e4572e")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("epoch seconds (red tick: predicted)")
    return _png(fig)
