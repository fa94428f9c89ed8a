"""Chrome / Perfetto trace of an ``EpochProfile`` (one slice per phase per step).

The profile keeps per-step phase totals, not every event, so inside a step
the phases are laid end to end in a fixed order; step boundaries are real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from epochmagic.profile import EpochProfile

ORDER = ("data", "transfer", "forward", "backward", "optimizer", "eval", "other")


def chrome_trace(prof: EpochProfile) -> dict[str, Any]:
    us = 1e6
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "epochmagic"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "steps"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "phases"}},
    ]
    starts = prof.step_starts_s or _sequential(prof)
    for i, (start, dur, phases) in enumerate(zip(starts, prof.step_times, prof.step_phases)):
        events.append(
            {
                "name": f"step {i + 1}",
                "cat": "step",
                "ph": "X",
                "pid": 1,
                "tid": 1,
                "ts": start * us,
                "dur": dur * us,
            }
        )
        t = start
        for name in ORDER:
            d = phases.get(name, 0.0)
            if d <= 0:
                continue
            events.append(
                {
                    "name": name,
                    "cat": "phase",
                    "ph": "X",
                    "pid": 1,
                    "tid": 2,
                    "ts": t * us,
                    "dur": d * us,
                    "args": {"step": i + 1},
                }
            )
            t += d
    if starts:
        before = starts[0]
        after_start = starts[-1] + prof.step_times[-1]
        if before > 0:
            events.append(
                {
                    "name": "outside steps",
                    "cat": "outside",
                    "ph": "X",
                    "pid": 1,
                    "tid": 1,
                    "ts": 0.0,
                    "dur": before * us,
                }
            )
        if prof.wall_s > after_start:
            events.append(
                {
                    "name": "outside steps",
                    "cat": "outside",
                    "ph": "X",
                    "pid": 1,
                    "tid": 1,
                    "ts": after_start * us,
                    "dur": (prof.wall_s - after_start) * us,
                }
            )
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
