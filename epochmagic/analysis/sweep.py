"""The phase sweep (docs/design.md §2): every instant of the run credited to
one phase, for the run and per step, and on a device clock the seconds the
device was busy by phase.

Pure functions over typed events (:mod:`epochmagic.model.events`), used by
:mod:`epochmagic.analysis.timeline`.
"""

from __future__ import annotations

from epochmagic.model.events import ENTER_OF_EXIT, EXIT_OF_ENTER, PHASE_OF_ENTER, Event
from epochmagic.model.vocabulary import PHASES

Spans = list[tuple[float, float]]
PhaseSpans = list[tuple[float, float, str]]


def sweep(
    events: list[Event],
    start: float,
    end: float,
    bounds: Spans,
    spans: Spans,
    busy: Spans | None = None,
) -> tuple[dict[str, float], list[dict[str, float]], dict[str, float] | None, PhaseSpans]:
    """Credit every instant to one phase: the innermost open one inside a step,
    ``eval`` inside an evaluation span, ``other`` elsewhere. With ``busy``,
    also the device's busy seconds by phase. Last, the run tiled into
    ``(start, end, phase)`` spans, neighbours of one phase merged, so anything
    timed on the same clock (a stack sample) can ask which phase was open."""
    on_device = busy is not None
    busy = busy or []
    cuts = _cuts(events, start, end, bounds, spans, busy)
    totals = dict.fromkeys(PHASES, 0.0)
    per_step = [dict.fromkeys(PHASES, 0.0) for _ in bounds]
    device = dict.fromkeys(PHASES, 0.0)
    tiles: PhaseSpans = []
    stack: list[int] = []
    ei = si = vi = bi = 0
    n = len(events)
    for a, b in zip(cuts, cuts[1:]):
        while ei < n and events[ei].t <= a:
            _apply(stack, events[ei].kind)
            ei += 1
        while si < len(bounds) and bounds[si][1] <= a:
            si += 1
        while vi < len(spans) and spans[vi][1] <= a:
            vi += 1
        in_step = si < len(bounds) and bounds[si][0] <= a
        in_eval = vi < len(spans) and spans[vi][0] <= a
        if in_eval:
            phase = "eval"
        elif in_step and stack:
            phase = PHASE_OF_ENTER[stack[-1]]
        else:
            phase = "other"
        d = b - a
        totals[phase] += d
        if tiles and tiles[-1][2] == phase:
            tiles[-1] = (tiles[-1][0], b, phase)
        else:
            tiles.append((a, b, phase))
        if in_step:
            per_step[si][phase] += d
        while bi < len(busy) and busy[bi][1] <= a:
            bi += 1
        if bi < len(busy) and busy[bi][0] <= a:
            device[phase] += d
    totals = _exact(totals, end - start)
    per_step = [_exact(p, b1 - b0) for p, (b0, b1) in zip(per_step, bounds)]
    return totals, per_step, (device if on_device else None), tiles


def _cuts(
    events: list[Event], start: float, end: float, bounds: Spans, spans: Spans, busy: Spans
) -> list[float]:
    """Every instant where the phase may change, in order, within the run."""
    cuts = sorted(
        {
            start,
            end,
            *(e.t for e in events),
            *(t for b in bounds for t in b),
            *(t for s in spans for t in s),
            *(t for s in busy for t in s),
        }
    )
    return [c for c in cuts if start <= c <= end]


def _apply(stack: list[int], kind: int) -> None:
    if kind in EXIT_OF_ENTER:
        stack.append(kind)
        return
    enter = ENTER_OF_EXIT.get(kind)
    if enter is None or enter not in stack:
        return
    while stack:
        if stack.pop() == enter:
            break


def _exact(phases: dict[str, float], total: float) -> dict[str, float]:
    """Make ``other`` the remainder so the phases sum to ``total`` exactly."""
    out = {k: max(0.0, v) for k, v in phases.items()}
    known = sum(v for k, v in out.items() if k != "other")
    if known > total:  # float noise only
        scale = total / known if known else 0.0
        out = {k: v * scale for k, v in out.items()}
        known = sum(v for k, v in out.items() if k != "other")
    out["other"] = max(0.0, total - known)
    return out
