"""One what-if: the same cell again under another setting, measured.

The prediction comes first (``epochmagic/diagnosis/predict.py``), then the
plan (``epochmagic/whatif/plan.py``), then ``Session.run("whatif")``, which
snapshots and restores everything the run may change and captures its output.
The user's loader, model and optimizer objects end exactly as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from epochmagic.analysis import gpu
from epochmagic.analysis.assemble import build_profile
from epochmagic.analysis.figures import step_times_without_compile
from epochmagic.analysis.timeline import steady_median
from epochmagic.capture.loaders import Unsupported
from epochmagic.diagnosis import predict, savings
from epochmagic.diagnosis.diagnose import diagnose
from epochmagic.model.profile import EpochProfile
from epochmagic.model.vocabulary import SETTING_KEYS
from epochmagic.session.execute import Limits
from epochmagic.session.session import Session
from epochmagic.whatif.plan import Plan, default_steps, label, loading, make_plan, resolve


def session_of(prof: EpochProfile) -> Session:
    """The live session behind a profile (raises when it has none)."""
    session = prof.session
    if not isinstance(session, Session):
        prof._live()  # raises: the profile has no session
        raise TypeError(f"a profile's session must be a Session, got {type(session).__name__}")
    return session


def rerun(
    base: EpochProfile, steps: int | None = None, _progress: Any = None, **changes: Any
) -> EpochProfile:
    """``base.rerun(...)`` with a progress bar to drive (``_progress``: a
    tqdm-like bar, False for none, None for a fresh tqdm bar)."""
    return session_of(base).rerun(base, steps, _progress=_progress, **changes)


def run_whatif(
    session: Session,
    base: EpochProfile,
    steps: int | None,
    progress: Any,
    changes: dict[str, Any],
) -> EpochProfile:
    """Predict, plan and measure one what-if (``Session.rerun`` calls this)."""
    setting = resolve(base, **changes)
    n_steps = steps if steps is not None else default_steps(base)
    if n_steps < 1:
        raise ValueError(f"steps must be at least 1, got {n_steps}")
    predicted = predict.epoch(base, setting, session.history, loading(base, session, setting))
    try:
        plan = make_plan(base, session, setting)
    except Unsupported as e:
        return _unsupported(base, setting, predicted, str(e))
    with _progress_bar(progress, n_steps, label(setting, base)) as on_step:
        result = _measure(base, session, setting, plan, n_steps, on_step)
    result.predicted = predicted
    # the what-if of exactly a finding's suggestion measures its saving
    savings.remeasured(base, {k: v for k, v in changes.items() if v is not None}, result)
    return result


def _measure(
    base: EpochProfile,
    session: Session,
    s: dict[str, Any],
    plan: Plan,
    n_steps: int,
    on_step: Callable[[int], None] | None,
) -> EpochProfile:
    run = session.run("whatif", Limits(steps=n_steps), plan.variant, on_step=on_step)
    prof = build_profile(run, session.cell, session.user_ns)
    prof.config.update({k: s[k] for k in SETTING_KEYS})
    if not prof.config.get("workers"):
        prof.config["prefetch_factor"] = None
    prof.steps_per_epoch = plan.steps_per_epoch
    prof.epoch_s = _epoch_estimate(base, prof)
    in_steps = sum(step_times_without_compile(prof))  # as the epoch estimate counts them
    if prof.samples and in_steps > 0:
        prof.samples_per_s = prof.samples / in_steps
    prof.notes = [
        *plan.notes,
        *_what_ran(prof, n_steps),
        *_compiled(prof, plan.variant.switched),
    ]
    if run.status == "oom":
        prof.error = f"out of memory at {label(s, base)}: {prof.error}"
    prof.evidence = {
        **base.evidence,
        "optimizers": [
            {**o, "fused": o["fused"] or bool(s["fused"])}
            for o in base.evidence.get("optimizers", [])
        ],
    }
    gpu.utilisation(prof.gpu, prof)
    prof.findings = diagnose(prof)
    prof.session = session
    return prof


def _epoch_estimate(base: EpochProfile, prof: EpochProfile) -> float | None:
    """Steps measured + the rest at the steady median; time outside the steps
    borrowed from the baseline when this run did no evaluation. Compiling for
    the what-if is kept out (it is reported apart, in ``prof.compile``)."""
    if prof.status != "ok" or not prof.steps:
        return None
    times = step_times_without_compile(prof)
    med = steady_median(times) or 0.0
    total = prof.steps_per_epoch
    if total is None:
        return None
    outside = prof.outside_steps_s
    if prof.phases.get("eval", 0.0) == 0.0 and prof.steps < total:
        outside = base.outside_steps_s
    return outside + sum(times) + max(0, total - prof.steps) * med


def _compiled(prof: EpochProfile, switched: int) -> list[str]:
    """What compiling cost this what-if, kept apart from its step times."""
    comp = prof.compile
    if not switched or not comp or not comp.get("compiles"):
        return []
    fresh = comp["compiles"] - comp["recompiles"]
    said = (
        f"compiled {comp['compiles']} time(s) in {comp['compile_s']:.2f} s, kept out of the "
        "step times and the epoch estimate; what-ifs compile into copies of your compiled "
        "code, which stays as it was"
    )
    if fresh and comp["recompiles"]:
        said += f" ({fresh} first compile(s) of the copies, {comp['recompiles']} recompile(s))"
    elif fresh:
        said += " (the first what-if compiles the copies afresh)"
    else:
        said += f"; this setting recompiled: {'; '.join(comp['recompile_reasons'][:2])}"
    return [said]


def _what_ran(prof: EpochProfile, n_steps: int) -> list[str]:
    if prof.status != "ok":
        return [f"what-if {prof.status}: {prof.error}"]
    if prof.steps < min(n_steps, prof.steps_per_epoch or n_steps):
        return [f"only {prof.steps} of the {n_steps} requested steps ran (the cell ended first)"]
    return [
        f"what-if measured {prof.steps} steps; epoch time extrapolated to "
        f"{prof.steps_per_epoch} steps"
    ]


def _unsupported(base: EpochProfile, s: dict[str, Any], predicted: Any, why: str) -> EpochProfile:
    cfg = {**base.config, **{k: s[k] for k in SETTING_KEYS}}
    return EpochProfile(
        status="unsupported",
        error=why,
        config=cfg,
        environment=dict(base.environment),
        predicted=predicted,
        notes=[f"not run: {why}"],
        cell=base.cell,
    )


@contextlib.contextmanager
def _progress_bar(bar: Any, total: int, desc: str) -> Iterator[Callable[[int], None] | None]:
    if bar is False:
        yield None
        return
    if bar is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"what-if {desc}", unit="step", leave=False)
        own = True
    else:
        own = False
        bar.reset(total=total)
        bar.set_description(f"what-if {desc}")

    def on_step(done: int) -> None:
        bar.n = min(done, total)
        bar.refresh()

    try:
        yield on_step
    finally:
        if own:
            bar.close()
