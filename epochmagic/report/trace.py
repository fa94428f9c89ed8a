"""Chrome / Perfetto trace of an ``EpochProfile`` (one slice per phase per step).

The profile keeps per-step phase totals, not every event, so inside a step
the phases are laid end to end in a fixed order; step boundaries are real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from epochmagic.model.vocabulary import PHASES

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile

US = 1e6


def _slice(
    name: str, cat: str, tid: int, start_s: float, dur_s: float, **args: Any
) -> dict[str, Any]:
    event = {
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": 1,
        "tid": tid,
        "ts": start_s * US,
        "dur": dur_s * US,
    }
    if args:
        event["args"] = args
    return event


def chrome_trace(prof: EpochProfile) -> dict[str, Any]:
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "epochmagic"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "steps"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "phases"}},
    ]
    starts = prof.step_starts_s or _sequential(prof)
    for i, (start, dur, phases) in enumerate(zip(starts, prof.step_times, prof.step_phases)):
        events.append(_slice(f"step {i + 1}", "step", 1, start, dur))
        t = start
        for name in PHASES:
            d = phases.get(name, 0.0)
            if d > 0:
                events.append(_slice(name, "phase", 2, t, d, step=i + 1))
                t += d
    if starts:
        after = starts[-1] + prof.step_times[-1]
        if starts[0] > 0:
            events.append(_slice("outside steps", "outside", 1, 0.0, starts[0]))
        if prof.wall_s > after:
            events.append(_slice("outside steps", "outside", 1, after, prof.wall_s - after))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"epoch_s": prof.epoch_s, "status": prof.status},
    }


def _sequential(prof: EpochProfile) -> list[float]:
    out, t = [], 0.0
    for d in prof.step_times:
        out.append(t)
        t += d
    return out
