"""What counts as evaluation in a run (docs/design.md §2): passes over loaders
that do not train, and runs of no-grad / eval-mode forwards of a trained model.

Pure functions over typed events (:mod:`epochmagic.model.events`), used by
:mod:`epochmagic.analysis.timeline`.
"""

from __future__ import annotations

import bisect

from epochmagic.capture.recorder import Pass
from epochmagic.model.events import (
    BWD_ENTER,
    FWD_ENTER,
    FWD_EXIT,
    ITER_ENTER,
    NEXT_ENTER,
    NEXT_EXIT,
    NEXT_STOP,
    OPT_ENTER,
    Event,
)

Spans = list[tuple[float, float]]


def eval_spans(
    events: list[Event],
    passes: list[Pass],
    training_keys: set[tuple[str, int]],
    trained_roots: set[int],
    end: float,
) -> Spans:
    """Evaluation is a context: passes over loaders that do not train, and runs
    of no-grad / eval-mode calls of a model that is being trained (a teacher or
    EMA model is not trained, so its forward stays ``forward``)."""
    busy = passes_with_training(events)
    eval_passes = {
        id(p)
        for p in passes
        if not p.trained and not (p.keys & training_keys) and id(p) not in busy
    }
    spans, in_pass = _eval_pass_spans(events, eval_passes)
    return merge(spans + _eval_forward_runs(events, in_pass, trained_roots))


def _training_forward(e: Event) -> bool:
    return e.kind == FWD_ENTER and bool(e.info.grad and e.info.training)


def _eval_pass_spans(events: list[Event], eval_passes: set[int]) -> tuple[Spans, list[bool]]:
    """Each evaluation pass, from its start to its StopIteration (or to its
    last batch or forward when it never ran out); and for each event whether
    an evaluation pass is in progress at it (training ends that)."""
    spans: Spans = []
    in_pass: list[bool] = []
    open_pass: dict[int, float] = {}
    last_activity: dict[int, float] = {}
    current: int | None = None
    for e in events:
        t, kind, obj = e.t, e.kind, e.obj
        if kind in (ITER_ENTER, NEXT_ENTER):
            current = id(obj) if id(obj) in eval_passes else None
            if current is not None:
                open_pass.setdefault(current, t)
        elif kind == NEXT_STOP and id(obj) in open_pass:
            spans.append((open_pass.pop(id(obj)), t))
            last_activity.pop(id(obj), None)
            current = None
        elif kind in (NEXT_EXIT, FWD_EXIT) and current is not None:
            last_activity[current] = t
        elif kind in (BWD_ENTER, OPT_ENTER) or _training_forward(e):
            current = None
        in_pass.append(current is not None)
    for key, t0 in open_pass.items():
        spans.append((t0, last_activity.get(key, t0)))
    return spans, in_pass


def _eval_forward_runs(events: list[Event], in_pass: list[bool], trained_roots: set[int]) -> Spans:
    """Runs of eval forwards of a trained model, outside evaluation passes."""
    spans: Spans = []
    run: list[float] = []  # [start, end] of the current run of eval forwards
    run_had_grad = False
    for e, inside in zip(events, in_pass):
        t, kind, obj = e.t, e.kind, e.obj
        training_fwd = _training_forward(e)
        if kind == FWD_ENTER and id(obj) in trained_roots and not training_fwd:
            if not inside:
                if not run:
                    run = [t, t]
                run_had_grad = run_had_grad or bool(e.info.grad)
        elif kind == FWD_EXIT and run and id(obj) in trained_roots:
            run[1] = t
        elif run and (kind in (BWD_ENTER, OPT_ENTER, ITER_ENTER, NEXT_ENTER) or training_fwd):
            # an eval-mode forward with grad followed by backward is training
            # (fine-tuning with frozen batch-norm), not evaluation
            if not (kind == BWD_ENTER and run_had_grad) and run[1] > run[0]:
                spans.append((run[0], run[1]))
            run, run_had_grad = [], False
    if run and run[1] > run[0]:
        spans.append((run[0], run[1]))
    return spans


def passes_with_training(events: list[Event]) -> set[int]:
    """Passes with a backward or optimizer step between their first and last
    batch: loaders zipped with the training loader, not evaluation."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    training_at: list[int] = []
    for i, e in enumerate(events):
        if e.kind in (ITER_ENTER, NEXT_ENTER, NEXT_EXIT, NEXT_STOP):
            first.setdefault(id(e.obj), i)
            last[id(e.obj)] = i
        elif e.kind in (BWD_ENTER, OPT_ENTER):
            training_at.append(i)
    return {
        key
        for key, a in first.items()
        if (j := bisect.bisect_right(training_at, a)) < len(training_at)
        and training_at[j] < last[key]
    }


def merge(spans: Spans) -> Spans:
    out: Spans = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif b > a:
            out.append((a, b))
    return out
