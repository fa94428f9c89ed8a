"""Line-level attribution from a short, separate traced run.

Line tracing slows every Python frame on 3.11 (+18 % to 2.6x measured), so the
measured epoch is never traced. Instead the cell runs again for a few steps
under line_profiler (``Session.run("trace")``: its output captured and
everything a re-run can change snapshotted before and restored after).
"""

from __future__ import annotations

import linecache
import types
from dataclasses import replace
from typing import Any

from line_profiler import LineProfiler

from epochmagic.capture.patching import Patches
from epochmagic.model.profile import EpochProfile, LineStat
from epochmagic.session.execute import Limits
from epochmagic.session.linemode import retrace_blocker
from epochmagic.session.notebook import file_label, notebook_functions
from epochmagic.session.session import Session, Variant

MIN_STEPS, MAX_STEPS = 3, 20
SHARE = 0.10  # of the epoch's time the traced run may take
TRACE_SLOWDOWN = 2.0  # assumed cost of tracing when sizing the run
MAX_LINES = 200


def traced_steps(prof: EpochProfile) -> int:
    """A handful of steps, sized to stay within about 10 % of the epoch."""
    med = prof.step_s or 0.0
    setup = prof.step_starts_s[0] if prof.step_starts_s else 0.0
    budget = SHARE * prof.wall_s - setup
    n = int(budget / (med * TRACE_SLOWDOWN)) if med > 0 else MAX_STEPS
    return max(1, min(prof.steps, max(MIN_STEPS, min(MAX_STEPS, n))))


def attribute_lines(prof: EpochProfile, session: Session, variant: Variant | None = None) -> None:
    """Fill ``prof.lines`` / ``prof.lines_steps`` (or add a note saying why not:
    ``linemode.retrace_blocker``, the gate the sampler's fallback uses too).
    ``variant``: the measured run's own setting, which the traced run keeps."""
    __tracebackhide__ = True  # noqa: F841
    blocker = retrace_blocker(prof, session.user_ns)
    if blocker is not None:
        prof.notes.append(
            f"no line attribution: {blocker} (--lines sampled gives lines without a re-run)"
        )
        return
    limits = Limits(steps=traced_steps(prof), seconds=max(1.0, 2 * SHARE * prof.wall_s))
    lp = LineProfiler()
    try:
        with Patches() as patches:  # the notebook functions' own code is back after the run
            _register_notebook_functions(lp, session.shell, patches)
            traced = replace(session.cell, code=_register_code(lp, session.cell.code))
            result = session.run("trace", limits, variant, tracer=lp, cell=traced)
    except KeyboardInterrupt:
        prof.notes.append("line attribution interrupted: no hot lines")
        raise
    if result.status != "ok":
        prof.notes.append(f"line attribution failed ({result.exc!r}): no hot lines")
        return
    prof.lines = _line_stats(lp, session.shell)
    prof.lines_source = "traced"
    prof.lines_steps = len(result.timeline.step_bounds)


def _register_code(lp: LineProfiler, code: types.CodeType) -> types.CodeType:
    """Register a code object and the functions/classes nested in it; returns
    the (NOP-padded) code to run instead."""
    consts = tuple(
        _register_code(lp, c) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    code = code.replace(co_consts=consts)
    holder = types.SimpleNamespace(__code__=code)
    lp.add_function(holder)
    padded: types.CodeType = holder.__code__
    return padded


def _register_notebook_functions(lp: LineProfiler, shell: Any, patches: Patches) -> None:
    """Swap in line_profiler's padded code for notebook-defined functions
    until ``patches`` closes."""
    for fn in notebook_functions(shell):
        holder = types.SimpleNamespace(__code__=fn.__code__)
        lp.add_function(holder)
        try:
            patches.swap(fn, "__code__", holder.__code__)
        except ValueError:  # closure mismatch: leave this one untraced
            continue


def _line_stats(lp: LineProfiler, shell: Any) -> list[LineStat]:
    stats = lp.get_stats()
    unit = stats.unit
    merged: dict[tuple[str, int], list[float]] = {}  # [hits, seconds]
    for (filename, _first, _name), rows in stats.timings.items():
        for lineno, hits, t in rows:
            acc = merged.setdefault((filename, lineno), [0.0, 0.0])
            acc[0] += hits
            acc[1] += t * unit
    out = []
    for (filename, lineno), (count, secs) in merged.items():
        if count <= 0:
            continue
        source = linecache.getline(filename, lineno).rstrip("\n")
        out.append(
            LineStat(file_label(shell, filename), int(lineno), source, int(count), float(secs))
        )
    out.sort(key=lambda s: s.time_s, reverse=True)
    return out[:MAX_LINES]
