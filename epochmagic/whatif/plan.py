"""A what-if's setting and what its run changes.

The setting is the baseline's, with the keywords the user changed
(``epochmagic.model.vocabulary.SETTINGS``); the plan turns it into the
``Variant`` the session runs the cell under: the training loader rebuilt,
autocast around root forwards, fused optimizers and the thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from epochmagic.capture import environment as envmod
from epochmagic.capture import loaders
from epochmagic.capture.loaders import Unsupported
from epochmagic.capture.patching import Patches
from epochmagic.diagnosis import predict
from epochmagic.model.profile import EpochProfile
from epochmagic.model.thresholds import threshold
from epochmagic.model.vocabulary import LOADER_KEYS, SETTING_KEYS, check_setting
from epochmagic.session.session import Session, Variant
from epochmagic.whatif import changes

DEFAULT_STEPS = 30


# -- settings ------------------------------------------------------------------------
def resolve(base: EpochProfile, **changed: Any) -> dict[str, Any]:
    """The full setting of a what-if: ``None`` keeps the baseline's value."""
    cfg = base.config
    setting = {k: cfg.get(k) for k in SETTING_KEYS}
    setting["precision"] = cfg.get("precision") or "fp32"
    setting["threads"] = cfg.get("threads") or torch.get_num_threads()
    for key, value in changed.items():
        if key not in SETTING_KEYS:
            raise TypeError(
                f"unknown what-if setting {key!r}; use one of {', '.join(SETTING_KEYS)}"
            )
        if value is not None:
            setting[key] = value
    check_setting(setting)
    return setting


def label(setting: dict[str, Any], base: EpochProfile) -> str:
    """The changed settings, e.g. ``workers=2, threads=1``; ``baseline`` if none."""
    cfg = {**base.config, "threads": base.config.get("threads")}
    parts = [f"{k}={setting[k]}" for k in SETTING_KEYS if setting.get(k) != cfg.get(k)]
    return ", ".join(parts) or "baseline"


def default_steps(base: EpochProfile) -> int:
    """Enough steps for a steady median after warm-up, within the epoch."""
    if base.steps_per_epoch:
        return max(1, min(DEFAULT_STEPS, base.steps_per_epoch))
    return DEFAULT_STEPS


def loading(base: EpochProfile, session: Session, s: dict[str, Any]) -> dict[str, float] | None:
    """Per-batch loading costs the prediction needs, measured once per session:
    in this process (when the baseline's workers hide it) and in one worker
    process (when the what-if uses workers)."""
    if session.train_loader is None or base.step_clock != "loader":
        return None
    if session.loading is None:  # start from what the magic already measured for the findings
        session.loading = dict(base.evidence.get("loading") or {})
    if base.config.get("workers") and "per_batch_s" not in session.loading:
        session.loading.update(loaders.loading_cost(session.train_loader) or {})
    if s.get("workers") and "worker_batch_s" not in session.loading:
        seconds = loaders.worker_batch_time(session.train_loader)
        if seconds is not None:
            session.loading["worker_batch_s"] = seconds
    return session.loading or None


# -- the plan --------------------------------------------------------------------------
@dataclass
class Plan:
    """The run's variant, the epoch's length under it, and what to tell the user."""

    variant: Variant
    steps_per_epoch: int | None
    notes: list[str]


def make_plan(base: EpochProfile, session: Session, s: dict[str, Any]) -> Plan:
    """Raises Unsupported for a setting this cell or machine cannot run."""
    notes: list[str] = []
    variant = Variant(original=session.train_loader, compiled=base.compile is not None)
    # compared with the user's loader: the baseline may itself be a what-if
    # (%%epochprofile --batch-size 64)
    current = envmod.loader_config(session.train_loader)
    loader_changes = {
        k: s[k] for k in LOADER_KEYS if s.get(k) is not None and s.get(k) != current.get(k)
    }
    steps_per_epoch = base.steps_per_epoch
    if loader_changes.get("pin_memory") and str(base.config.get("device", "cpu")) == "cpu":
        raise Unsupported(
            "pin_memory=True: the model is on the CPU, so no batch is copied to a device "
            "(pinned memory only speeds up host-to-GPU copies)"
        )
    if loader_changes:
        if session.train_loader is None or base.step_clock != "loader":
            raise Unsupported(
                f"{', '.join(loader_changes)}: this cell has no training DataLoader to change "
                "(its steps are counted by the optimizer)"
            )
        variant.substitute, variant.rebuilt = changes.substitution(
            session.train_loader, loader_changes
        )
        _check_memory(base, s)
        try:
            steps_per_epoch = len(variant.rebuilt[0])
        except TypeError:
            steps_per_epoch = None
    variant.autocast = _autocast(base, s, notes)
    variant.install = _installer(base, session, s, notes)
    return Plan(variant, steps_per_epoch, notes)


def _autocast(base: EpochProfile, s: dict[str, Any], notes: list[str]) -> Callable[[], Any] | None:
    device = str(base.config.get("device") or "cpu").split(":")[0]
    factory = changes.autocast_factory(
        s["precision"], base.config.get("precision") or "fp32", device
    )
    note = changes.scaler_note(s["precision"], device, base.evidence.get("grad_scaler"))
    if factory is not None and note:
        notes.append(note)
    return factory


def _installer(
    base: EpochProfile, session: Session, s: dict[str, Any], notes: list[str]
) -> Callable[[Patches], None]:
    """The what-if's own patches: fused optimizers, the thread count."""
    fuse = bool(s["fused"]) and not base.config.get("fused")

    def install(patches: Patches) -> None:
        ns = session.user_ns
        if fuse:
            names = {n for n, v in ns.items() if any(v is o for o in session.optimizers)}
            changes.fused_optimizers(patches, ns, names, notes)
        patches.setting(torch.get_num_threads, torch.set_num_threads, int(s["threads"]))

    return install


def _check_memory(base: EpochProfile, s: dict[str, Any]) -> None:
    """On the CPU a real out-of-memory kills the kernel instead of raising:
    refuse a batch size whose estimated memory will not fit (on a GPU an
    out-of-memory is caught and reported as ``oom``)."""
    old, new = base.config.get("batch_size"), s.get("batch_size")
    if base.memory.get("kind") != "cpu" or not old or not new or new <= old:
        return
    estimate = (predict.peak_bytes(base, s) or 0) - int(base.memory.get("peak_bytes") or 0)
    free = changes.available_memory()
    if free is not None and estimate > threshold("memory_headroom") * free:
        raise Unsupported(
            f"batch_size={new}: estimated {estimate / 2**30:.1f} GiB more memory than batch "
            f"{old} used, but only {free / 2**30:.1f} GiB is available"
        )
