"""What each finding's fix is expected to save, and the ranking that follows.

``Finding.saving`` is the fraction of the epoch a fix is expected to save:
from the prediction model (:mod:`epochmagic.diagnosis.predict`) where a ``rerun``
setting tests the fix, from a speed-up measured for that kind of fix where
one is known (each cited beside its number), and None where nothing says how
much. A ``rerun`` of exactly a finding's suggestion replaces the prediction
with what it measured (:func:`remeasured`).

Actionable findings rank by saving (numbers first, largest first; None after
them; negative savings last), then by share; informative ones come last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from epochmagic.analysis.figures import epoch
from epochmagic.model.profile import EpochProfile, Finding
from epochmagic.model.thresholds import threshold as t

INFORMATIVE = ("model_compute", "imbalance")
# the measured speed-ups of a kind of fix (where no what-if predicts it) are in
# epochmagic/model/thresholds.py with where each was measured


def predicted(prof: EpochProfile, f: Finding) -> float | None:
    rule = _RULES.get(f.code)
    return None if rule is None else rule(prof, f)


def with_predictions(prof: EpochProfile, found: list[Finding]) -> list[Finding]:
    """Each finding with its predicted saving, never more than the share it is
    about (hiding the data wait behind compute saves at most that wait)."""
    return [
        dataclasses.replace(f, saving=min(s, f.share), saving_source="predicted")
        if (s := predicted(prof, f)) is not None
        else f
        for f in found
    ]


def rank(found: list[Finding]) -> list[Finding]:
    def key(f: Finding) -> tuple[int, float, float]:
        if f.saving is None:
            return (1, 0.0, -f.share)
        return (2 if f.saving < 0 else 0, -f.saving, -f.share)

    actionable = sorted((f for f in found if f.code not in INFORMATIVE), key=key)
    return actionable + [f for f in found if f.code in INFORMATIVE]


def remeasured(base: EpochProfile, setting: dict[str, Any], result: EpochProfile) -> bool:
    """A what-if of exactly a finding's suggestion ran: its measured saving
    replaces the prediction and the base profile's findings re-rank."""
    if result.status != "ok" or not result.epoch_s or not base.epoch_s:
        return False
    changed = False
    out = []
    for f in base.findings:
        if f.suggestion and f.suggestion == setting:
            f = dataclasses.replace(
                f, saving=1.0 - result.epoch_s / base.epoch_s, saving_source="measured"
            )
            changed = True
        out.append(f)
    if changed:
        base.findings = rank(out)
    return changed


# -- per finding ---------------------------------------------------------------------
def _speedup(prof: EpochProfile, setting: dict[str, Any]) -> float | None:
    from epochmagic.diagnosis import predict

    base = prof.epoch_s or prof.wall_s
    guess = predict.epoch(prof, {**prof.config, **setting}, [], prof.evidence.get("loading"))
    value = guess.get("epoch_s")
    return 1.0 - value / base if value and base else None


def _data_loading(prof: EpochProfile, f: Finding) -> float | None:
    from epochmagic.diagnosis.datafindings import _worker_setting

    _, gain = _worker_setting(prof)
    return 1.0 - 1.0 / gain if gain else None


def _suggested(prof: EpochProfile, f: Finding) -> float | None:
    return _speedup(prof, f.suggestion) if f.suggestion else None


def _all_of_it(prof: EpochProfile, f: Finding) -> float:
    """The fix removes what the finding measured (later epochs' start-up, the
    growth, the idle bubble)."""
    return f.share


def _optimizer(prof: EpochProfile, f: Finding) -> float:
    return f.share * (1.0 - t("fused_step_ratio"))


def _precision(prof: EpochProfile, f: Finding) -> float:
    on_gpu = str(prof.config.get("device", "cpu")).startswith("cuda")
    speedup = t("bf16_gpu_speedup") if on_gpu else t("bf16_cpu_speedup")
    return f.share * (1.0 - 1.0 / speedup)


def _transfer(prof: EpochProfile, f: Finding) -> float | None:
    return f.share * (1.0 - 1.0 / t("pinned_speedup")) if f.suggestion.get("pin_memory") else None


def _compile(prof: EpochProfile, f: Finding) -> float | None:
    """Recompiles are what a fix saves (the first compile is paid once)."""
    comp = prof.compile or {}
    n, again = int(comp.get("compiles") or 0), int(comp.get("recompiles") or 0)
    if not n or not again:
        return None
    return float(comp.get("compile_s") or 0.0) * again / n / epoch(prof)


_RULES: dict[str, Callable[[EpochProfile, Finding], float | None]] = {
    "data_loading": _data_loading,
    "threads": _suggested,
    "small_batch": _suggested,
    "worker_startup": _all_of_it,
    "step_time_growth": _all_of_it,
    "sync_points": _all_of_it,
    "optimizer_step": _optimizer,
    "precision": _precision,
    "transfer": _transfer,
    "compile": _compile,
}
