"""``%%epochprofile --batch-size/--workers/--precision``: the measured run
itself under a what-if setting (the magic's ``MAGIC_SETTINGS``).

Unlike ``rerun`` this run is the user's training, so its effects stay; only the
loader swap is undone (the user's loader object is never modified). The
setting is a ``Variant`` of the run: ``Session.run`` applies and undoes it,
for the measured run and for the traced run of line attribution alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from IPython.core.error import UsageError

from epochmagic.capture import environment as envmod
from epochmagic.capture.loaders import Unsupported
from epochmagic.model.profile import EpochProfile
from epochmagic.model.vocabulary import BY_NAME, LOADER_KEYS, MAGIC_SETTINGS
from epochmagic.session.session import Variant
from epochmagic.whatif.changes import autocast_factory, substitution


@dataclass(eq=False)
class FirstRun(Variant):
    """The magic's own setting; ``original`` is the user's training loader
    when it is swapped for a rebuilt one."""

    precision: str | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def plan(
        cls, ns: dict[str, Any], loader_name: str | None, settings: dict[str, Any]
    ) -> FirstRun:
        """``settings``: the magic's settings by name (None: not given)."""
        plan = cls(precision=settings.get("precision"))
        changes = {k: v for k, v in settings.items() if k in LOADER_KEYS and v is not None}
        if changes:
            plan.original = training_loader(ns, loader_name)
            try:
                plan.substitute, plan.rebuilt = substitution(plan.original, changes)
            except Unsupported as e:
                raise UsageError(str(e)) from None
            said = ", ".join(f"{BY_NAME[k].option} {v}" for k, v in changes.items())
            plan.notes.append(
                f"measured with {said}: the training loader was rebuilt for the "
                "run; the original loader object is unchanged"
            )
        if plan.precision is not None:
            device = envmod.model_device([v for v in ns.values() if isinstance(v, torch.nn.Module)])
            try:
                plan.autocast = autocast_factory(plan.precision, "fp32", device.split(":")[0])
            except Unsupported as e:
                raise UsageError(f"--precision {plan.precision}: {e}") from None
            plan.notes.append(
                f"measured with autocast({plan.precision}) around the model's forward"
            )
        return plan

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
    options = "/".join(s.option for s in MAGIC_SETTINGS if s.loader)
    raise UsageError(
        f"{options} change the training DataLoader, but "
        + ("none is defined before the cell" if not unique else "several are defined")
        + ": name it with --loader NAME (it must exist before the cell runs)"
    )
