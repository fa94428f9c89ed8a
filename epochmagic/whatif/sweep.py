"""Sweeps: every combination of a grid of what-if settings, ranked."""

from __future__ import annotations

import itertools
from typing import Any

from epochmagic.model.profile import EpochProfile
from epochmagic.session.session import Session
from epochmagic.whatif.rerun import session_of


def sweep(base: EpochProfile, steps: int | None = None, **grid: Any) -> list[EpochProfile]:
    """``base.sweep(...)``."""
    return session_of(base).sweep(base, steps, **grid)


def run_sweep(
    session: Session, base: EpochProfile, steps: int | None, grid: dict[str, Any]
) -> list[EpochProfile]:
    """Run every combination of the listed settings; ranked by epoch time
    (fastest first), unsupported and failed runs last."""
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    combos = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(combos), desc="sweep", unit="run") as outer:
        for combo in combos:
            results.append(session.rerun(base, steps, _progress=False, **combo))
            outer.update(1)
    return rank(results)


def rank(results: list[EpochProfile]) -> list[EpochProfile]:
    def key(p: EpochProfile) -> tuple[int, float]:
        if p.status == "ok" and p.epoch_s is not None:
            return (0, p.epoch_s)
        return (1, 0.0)

    return sorted(results, key=key)
