"""Turns the probes' event log into steps and phases (docs/design.md §2).

Pure functions over recorded events: no torch calls, so the rules (which
loader trains, where a step starts and ends (:mod:`epochmagic.analysis.steps`),
what counts as evaluation (:mod:`epochmagic.analysis.evalspans`), which phase
an instant belongs to (:mod:`epochmagic.analysis.sweep`), which steps are
warm-up) are unit-testable with a fake clock.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from epochmagic.analysis.evalspans import eval_spans
from epochmagic.analysis.steps import loader_steps, update_steps
from epochmagic.analysis.sweep import sweep
from epochmagic.capture.recorder import Pass, passes
from epochmagic.model.events import FWD_ENTER, MEM, SYNC, Event, RawEvent, as_events
from epochmagic.model.thresholds import threshold
from epochmagic.model.vocabulary import PHASES

__all__ = ["PHASES", "Sync", "Timeline", "analyse", "steady_median", "warmup_count"]


class Sync(NamedTuple):
    """A synchronising call, as the gpu fields count it."""

    t: float  # when it returned, on the run's clock
    filename: str
    lineno: int
    in_copy: bool  # a blocking host-to-device copy
    wait: float  # seconds the host waited: 0 unless the run was moved to device time


@dataclass
class Timeline:
    start: float  # clock time the run began
    wall_s: float
    phases: dict[str, float]
    step_bounds: list[tuple[float, float]]  # absolute clock times
    step_phases: list[dict[str, float]]
    step_samples: list[int]
    step_tokens: list[int | None]
    memory_samples: list[tuple[float, int]]
    step_memory: list[int]
    clock: str  # "loader", "optimizer", "backward" or "none"
    training_pass: Pass | None
    eval_spans: list[tuple[float, float]] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    # on a device clock: seconds the device had work queued, by the phase that
    # launched it (None on the CPU), where it had (devicetime's intervals), and
    # the synchronising calls (time, filename, lineno, in a copy, seconds waited)
    device_phases: dict[str, float] | None = None
    busy: list[tuple[float, float]] = field(default_factory=list)
    busy_estimate: list[tuple[float, float]] = field(default_factory=list)
    syncs: list[Sync] = field(default_factory=list)
    # the sweep's tiling of the run: (start, end, phase), in order, one phase
    # per span, so a stack sample's phase is the span open at its time
    phase_spans: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def step_times(self) -> list[float]:
        return [b - a for a, b in self.step_bounds]

    @property
    def outside_steps_s(self) -> float:
        return max(0.0, self.wall_s - sum(self.step_times))


def analyse(
    events: Iterable[RawEvent],
    start: float,
    end: float,
    *,
    trained_param_ids: set[int] | None = None,
    clock_opt: Any = None,
    busy: list[tuple[float, float]] | None = None,
    busy_estimate: list[tuple[float, float]] | None = None,
) -> Timeline:
    """Work out steps, evaluation spans and per-phase time from the events.

    ``busy``: where the device had work queued, when the events are already
    on the device timeline (:mod:`epochmagic.capture.devicetime`). ``events``:
    the recorder's log, raw tuples or typed records (:mod:`epochmagic.model.events`).
    """
    typed = [e for e in as_events(events) if start <= e.t <= end]
    trained_param_ids = trained_param_ids or set()
    trained_roots = _trained_roots(typed, trained_param_ids)
    all_passes = passes(typed)
    training_keys: set[tuple[str, int]] = set()
    for p in all_passes:
        if p.trained:
            training_keys |= p.keys
    train_pass = next((p for p in all_passes if p.trained), None)

    if train_pass is not None:
        clock = "loader"
        bounds, samples, tokens, labels = loader_steps(typed, train_pass, end)
    else:
        clock, bounds, samples, tokens = update_steps(typed, clock_opt, trained_roots)
        labels = []
    spans = eval_spans(typed, all_passes, training_keys, trained_roots, end)
    phases, step_phases, device, phase_spans = sweep(typed, start, end, bounds, spans, busy)
    mem = [(e.t, int(e.info)) for e in typed if e.kind == MEM]
    return Timeline(
        start=start,
        wall_s=end - start,
        phases=phases,
        step_bounds=bounds,
        step_phases=step_phases,
        step_samples=samples,
        step_tokens=tokens,
        memory_samples=mem,
        step_memory=_step_memory(mem, bounds),
        clock=clock,
        training_pass=train_pass,
        eval_spans=spans,
        labels=labels,
        device_phases=device,
        busy=busy or [],
        syncs=[_sync(e) for e in typed if e.kind == SYNC],
        busy_estimate=busy_estimate or [],
        phase_spans=phase_spans,
    )


def _sync(e: Event) -> Sync:
    info = e.info
    return Sync(e.t, info.filename, info.lineno, info.in_copy, info.wait or 0.0)


def _trained_roots(events: list[Event], param_ids: set[int]) -> set[int]:
    """ids of root modules with a parameter that an optimizer updates."""
    roots: dict[int, Any] = {}
    for e in events:
        if e.kind == FWD_ENTER and id(e.obj) not in roots:
            roots[id(e.obj)] = e.obj
    trained = set()
    for key, module in roots.items():
        params = getattr(module, "parameters", None)
        if params is None:
            continue
        try:
            if any(id(p) in param_ids for p in params()):
                trained.add(key)
        except Exception:  # noqa: BLE001 (a module whose parameters() misbehaves is not ours to fix)
            continue
    return trained


def _step_memory(mem: list[tuple[float, int]], bounds: list[tuple[float, float]]) -> list[int]:
    out = []
    last = mem[0][1] if mem else 0
    j = 0
    for a, b in bounds:
        peak = None
        while j < len(mem) and mem[j][0] <= b:
            if mem[j][0] > a:
                peak = mem[j][1] if peak is None else max(peak, mem[j][1])
            last = mem[j][1]
            j += 1
        out.append(peak if peak is not None else last)
    return out


def steady_median(step_times: list[float]) -> float | None:
    """Median step time with warm-up steps left out."""
    if not step_times:
        return None
    return statistics.median(step_times[warmup_count(step_times) :])


def warmup_count(step_times: list[float]) -> int:
    """How many leading steps count as warm-up: one per ``warmup_steps_per``
    steps, at least one and at most ``warmup_max_steps``; none in runs shorter
    than ``warmup_min_steps``."""
    n = len(step_times)
    if n < threshold("warmup_min_steps"):
        return 0
    per = int(threshold("warmup_steps_per"))
    return max(1, min(n // per, int(threshold("warmup_max_steps"))))
