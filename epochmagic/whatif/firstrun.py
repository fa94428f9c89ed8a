"""``%%epochprofile --batch-size/--workers/--precision``: the measured run
itself under a what-if setting.

Unlike ``rerun`` this run is the user's training, so its effects stay; only the
loader swap is undone (the user's loader object is never modified).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from IPython.core.error import UsageError

from epochmagic.capture import environment as envmod
from epochmagic.capture.loaders import Unsupported
from epochmagic.model.profile import EpochProfile
from epochmagic.whatif.changes import autocast_factory, substitution


@dataclass
class FirstRun:
    original: Any = None  # the user's training loader when it is swapped
    substitute: Any = None
    rebuilt: list[Any] = field(default_factory=list)
    autocast: Any = None
    precision: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def plan(
        cls,
        ns: dict[str, Any],
        loader_name: str | None,
        batch_size: int | None,
        workers: int | None,
        precision: str | None,
    ) -> FirstRun:
        plan = cls(precision=precision)
        changes = {
            k: v for k, v in (("batch_size", batch_size), ("workers", workers)) if v is not None
        }
        if changes:
            plan.original = training_loader(ns, loader_name)
            try:
                plan.substitute, plan.rebuilt = substitution(plan.original, changes)
            except Unsupported as e:
                raise UsageError(str(e)) from None
            said = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changes.items())
            plan.notes.append(
                f"measured with {said}: the training loader was rebuilt for the "
                "run; the original loader object is unchanged"
            )
        if precision is not None:
            device = envmod.model_device([v for v in ns.values() if isinstance(v, torch.nn.Module)])
            try:
                plan.autocast = autocast_factory(precision, "fp32", device.split(":")[0])
            except Unsupported as e:
                raise UsageError(f"--precision {precision}: {e}") from None
            plan.notes.append(f"measured with autocast({precision}) around the model's forward")
        return plan

    def hooks(self) -> dict[str, Any]:
        return {"substitute": self.substitute, "autocast": self.autocast}

    @contextlib.contextmanager
    def applied(self, ns: dict[str, Any]) -> Iterator[None]:
        """Names bound to the user's loader see the rebuilt one during the run."""
        names = [n for n, v in ns.items() if self.original is not None and v is self.original]
        for n in names:
            ns[n] = self.rebuilt[0]
        try:
            yield
        finally:
            for n in names:
                if ns.get(n) is self.rebuilt[0]:
                    ns[n] = self.original

    def describe(self, prof: EpochProfile) -> None:
        if self.precision is not None:
            prof.config["precision"] = self.precision
        prof.notes[:0] = self.notes


def training_loader(ns: dict[str, Any], name: str | None) -> Any:
    """The training DataLoader named by --loader, or the one the namespace
    makes obvious (the only DataLoader, or the only one named like 'train')."""
    if name is not None:
        value = ns.get(name)
        if not isinstance(value, torch.utils.data.DataLoader):
            raise UsageError(f"--loader {name}: no DataLoader of that name in the namespace")
        return value
    found = {
        n: v
        for n, v in ns.items()
        if isinstance(v, torch.utils.data.DataLoader) and not n.startswith("_")
    }
    unique = {id(v): v for v in found.values()}
    if len(unique) == 1:
        return next(iter(unique.values()))
    trainish = {id(v): v for n, v in found.items() if "train" in n.lower()}
    if len(trainish) == 1:
        return next(iter(trainish.values()))
    raise UsageError(
        "--batch-size/--workers change the training DataLoader, but "
        + ("none is defined before the cell" if not unique else "several are defined")
        + ": name it with --loader NAME (it must exist before the cell runs)"
    )
