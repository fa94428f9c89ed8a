"""Sampled lines per phase: the one place that turns a sampled line's ticks into
seconds and shares, so the text and HTML reports, the dashboard's Lines tab and
the ``python_overhead`` finding all say the same thing.

A sampled line's ``time_s`` is the summed weight of its samples and
``phase_ticks`` counts them per phase, so its seconds in a phase are
``time_s * phase_ticks[phase] / ticks``. Traced lines (exact hits, no ticks)
have no per-phase view: every function here returns nothing for them.

Lines nest (a line's time includes its calls), so a line that runs the whole
loop (a cell's ``trainer.train()``, the library's inner loop) holds every
phase; the per-phase view names the lines inside it first (``loop_lines``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from epochmagic.analysis.figures import epoch, ms
from epochmagic.model.thresholds import threshold as t
from epochmagic.model.vocabulary import PHASES

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile, LineStat

# the phases a step's work is in: a line holding all of them runs the loop
# (eval and other also run outside the steps, so they decide nothing here)
STEP_WORK = ("data", "transfer", "forward", "backward", "optimizer")
CITED = 3  # lines python_overhead cites (a display count)


@dataclass(frozen=True)
class PhaseLines:
    """One phase of the per-phase view: its share of the epoch and its hottest
    lines, each with its seconds in this phase, hottest first."""

    phase: str
    share: float
    lines: tuple[tuple[LineStat, float], ...]


def is_sampled(prof: EpochProfile) -> bool:
    return prof.lines_source == "sampled" and bool(prof.lines)


def seconds_in(ls: LineStat, phase: str) -> float:
    """The line's seconds in ``phase`` (0 for a traced line)."""
    n = ls.phase_ticks.get(phase, 0)
    return ls.time_s * n / ls.ticks if ls.ticks and n else 0.0


def main_phase(ls: LineStat) -> str | None:
    """The phase most of the line's samples were in (None without samples)."""
    if not ls.phase_ticks:
        return None
    order = {p: i for i, p in enumerate(PHASES)}  # ties: the earlier phase
    return min(ls.phase_ticks, key=lambda p: (-ls.phase_ticks[p], order.get(p, len(PHASES)), p))


def wait_share(ls: LineStat) -> float:
    """The share of the line's samples taken while the host waited on the device."""
    return ls.wait_ticks / ls.ticks if ls.ticks else 0.0


def share(prof: EpochProfile, seconds: float) -> float:
    return seconds / epoch(prof)


def percent(x: float) -> str:
    """A share as a percentage: whole points, one decimal below 10 %."""
    return f"{x:.0%}" if x >= 0.1 or x == 0 else f"{x:.1%}"


def sample_count(prof: EpochProfile) -> int | None:
    """The samples the run took, where the session recorded it."""
    n = prof.evidence.get("line_samples")
    return int(n) if isinstance(n, (int, float)) else None


def loop_lines(prof: EpochProfile) -> list[LineStat]:
    """The lines that hold nearly all of the hottest line's samples in every step
    phase worth naming, two at least: they run the whole loop (a cell's
    ``trainer.train()``, ``train(model, loader)``), so each would top every
    phase and explain none."""
    total = epoch(prof)
    real = [p for p in STEP_WORK if prof.phases.get(p, 0.0) / total >= t("lines_phase_share")]
    if len(real) < 2 or not is_sampled(prof):
        return []
    most = {p: max(ls.phase_ticks.get(p, 0) for ls in prof.lines) for p in real}
    cover = t("lines_loop_cover")
    return [
        ls
        for ls in prof.lines
        if all(most[p] and ls.phase_ticks.get(p, 0) >= cover * most[p] for p in real)
    ]


def hot_lines(prof: EpochProfile, n: int) -> tuple[list[LineStat], list[LineStat]]:
    """The lines that run the whole loop, and the ``n`` hottest of the others:
    a Lightning ``fit`` holds a dozen nested loop frames at ~100 %, which would
    fill the hot lines and hide the ones inside. The loop's own come out
    hottest first, the cell's line first among equals."""
    outer = loop_lines(prof)
    ids = {id(ls) for ls in outer}
    others = [ls for ls in prof.lines if id(ls) not in ids]
    outer.sort(key=lambda ls: (-ls.ticks, not ls.filename.startswith("Cell ")))
    return outer, sorted(others, key=lambda ls: -ls.time_s)[:n]


def hottest(prof: EpochProfile, phase: str, limit: int) -> list[tuple[LineStat, float]]:
    """The sampled lines with the most seconds in ``phase``, hottest first. The
    lines that run the whole loop are left out when a line inside it explains a
    share worth naming; otherwise they are all there is to say."""
    if not is_sampled(prof):
        return []
    rows = [(ls, seconds_in(ls, phase)) for ls in prof.lines]
    rows = sorted((r for r in rows if r[1] > 0), key=lambda r: -r[1])
    outer = {id(ls) for ls in loop_lines(prof)}
    inner = [r for r in rows if id(r[0]) not in outer]
    if inner and share(prof, inner[0][1]) >= t("lines_phase_share"):
        rows = inner
    return rows[:limit]


def per_phase(prof: EpochProfile, limit: int = 3, every: bool = False) -> list[PhaseLines]:
    """The per-phase view, biggest phase first: the phases with a share worth
    naming (the biggest one at least), or ``every`` phase that has sampled
    lines; each with its ``limit`` hottest lines."""
    if not is_sampled(prof):
        return []
    total = epoch(prof)
    shares = {p: prof.phases.get(p, 0.0) / total for p in PHASES}
    ranked = sorted(PHASES, key=lambda p: -shares[p])
    if every:
        chosen = [p for p in ranked if any(ls.phase_ticks.get(p) for ls in prof.lines)]
    else:
        chosen = [p for p in ranked if shares[p] >= t("lines_phase_share")] or ranked[:1]
    return [PhaseLines(p, shares[p], tuple(hottest(prof, p, limit))) for p in chosen]


def where(ls: LineStat) -> str:
    """``file:line`` as the sampler names it (``transformers/trainer.py:2543``)."""
    return f"{ls.filename}:{ls.lineno}"


def cited(prof: EpochProfile) -> str:
    """What ``python_overhead`` names ("" for nothing): the hottest lines in
    ``other`` with their share of the epoch when lines were sampled; the
    hottest cell lines per step when they were traced (a separate run)."""
    if is_sampled(prof):
        hot = "; ".join(
            f"{where(ls)} `{_short(ls.source)}` {percent(share(prof, s))} of the epoch"
            for ls, s in hottest(prof, "other", CITED)
        )
        return f"hottest lines in `other`: {hot}" if hot else ""
    steps = max(1, prof.lines_steps)
    cell = [ls for ls in prof.lines if ls.filename.startswith("Cell")]
    hot = "; ".join(
        f"{ls.filename}:{ls.lineno} `{ls.source.strip()}` {ms(ls.time_s / steps)}/step"
        for ls in cell[:CITED]
    )
    return f"hottest lines: {hot}" if hot else ""


def _short(source: str, width: int = 60) -> str:
    src = source.strip()
    return src if len(src) <= width else src[: width - 3] + "..."
