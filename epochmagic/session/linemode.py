"""Where a measured run's hot lines come from (``--lines``).

``sampled`` (the default) reads them from the stack samples of the measured
epoch itself: nothing runs again, so library loops (Lightning, Ignite, a Hugging
Face Trainer) and compiled code get lines too, and side effects do not repeat.
``traced`` re-runs a few steps under line_profiler (``session/lines.py``) for
exact hits, where a re-run is safe. Where the sampler could not start, the
traced re-run stands in if it is safe, else there are no lines; a note says
which and why.
"""

from __future__ import annotations

from typing import Any, Literal

from epochmagic.analysis.run import RunResult
from epochmagic.analysis.samplelines import sampled_lines
from epochmagic.model.profile import EpochProfile
from epochmagic.session.notebook import own_code
from epochmagic.session.snapshot import unrestorable

LineMode = Literal["sampled", "traced", "off"]
LINE_MODES: tuple[LineMode, ...] = ("sampled", "traced", "off")


def attribute_sampled(
    prof: EpochProfile, run: RunResult, shell: Any, cell_filename: str
) -> LineMode:
    """Fill ``prof.lines`` from the run's samples; returns what is left to do:
    ``traced`` where the sampler could not start and a re-run is safe (the
    fallback), ``off`` otherwise."""
    why_not = run.sampler_why_not
    if why_not is not None:
        blocker = retrace_blocker(prof, shell.user_ns)
        instead = "lines traced from a short re-run instead"
        if blocker is not None:
            instead = f"no lines, as {blocker}"
        prof.notes.append(f"no sampled lines, the sampler could not start ({why_not}): {instead}")
        return "traced" if blocker is None else "off"
    interval = run.sample_interval_s
    if interval is None:  # measuring never started (--skip-epochs and the cell ended first)
        return "off"
    ms = f"{interval * 1000:g} ms"
    if not run.samples:  # a cell shorter than one interval
        if prof.steps:
            prof.notes.append(f"no sampled lines: the measured run took less than {ms}")
        return "off"
    own, label = own_code(shell, cell_filename)
    prof.lines = sampled_lines(run.samples, run.timeline, own, label)
    prof.lines_source = "sampled"
    prof.lines_steps = prof.steps
    prof.evidence["line_samples"] = len(run.samples)
    prof.notes.append(
        f"lines sampled every {ms} on average from the measured epoch ({len(run.samples)} "
        "samples); DataLoader worker processes are not sampled (their time is `data`)"
    )
    return "off"


def retrace_blocker(prof: EpochProfile, user_ns: dict[str, Any]) -> str | None:
    """Why a traced re-run of the cell is not safe (or cannot help), or None:
    the one gate of ``--lines traced`` and of the sampler's fallback."""
    if prof.status != "ok" or not prof.steps:
        return "the measured run " + (
            "took no training steps" if prof.status == "ok" else "did not finish"
        )
    if prof.compile is not None:
        return "a traced re-run would compile the cell's torch.compile code again"
    what = unrestorable(user_ns)
    if what is not None:
        return f"re-running this cell would advance {what}'s progress, which a snapshot cannot roll back"
    return None
