"""The words every layer shares, defined once: the phases of a step and the
what-if settings (docs/design.md, "Architecture").

``SETTINGS`` generates ``EpochProfile.rerun``'s keywords, the dashboard's
controls, the keys of ``prof.config`` a what-if records, and the magic's
``--batch-size`` / ``--workers`` / ``--precision`` options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PHASES = ("data", "transfer", "forward", "backward", "optimizer", "eval", "other")
PRECISIONS = ("fp32", "bf16", "fp16")
# optimizer classes (by name: this layer imports no torch) that take fused=True
FUSABLE = ("Adam", "AdamW", "SGD", "Adagrad")


@dataclass(frozen=True)
class Setting:
    """One knob a what-if can turn. ``kind`` is int, bool or str; ``minimum``
    bounds an int; ``choices`` lists a str's values; ``loader`` says the
    training DataLoader is rebuilt for it; ``magic_option`` says
    ``%%epochprofile`` takes it as ``--name-with-dashes`` for its own run."""

    name: str
    kind: type
    doc: str
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    loader: bool = False
    magic_option: bool = False

    @property
    def option(self) -> str:
        """The magic's spelling: ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        """Raise ValueError for a value this setting cannot take (None keeps)."""
        if value is None:
            return
        if self.kind is int:
            bounded = self.minimum is None or (isinstance(value, int) and value >= self.minimum)
            if not isinstance(value, int) or isinstance(value, bool) or not bounded:
                what = "a positive" if self.minimum == 1 else "a non-negative"
                raise ValueError(f"{self.name} must be {what} integer, got {value!r}")
        elif self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")


SETTINGS = (
    Setting(
        "batch_size",
        int,
        "training loader rebuilt at this batch size",
        1,
        loader=True,
        magic_option=True,
    ),
    Setting(
        "workers",
        int,
        "training loader rebuilt with this many worker processes",
        0,
        loader=True,
        magic_option=True,
    ),
    Setting(
        "precision",
        str,
        "autocast in this precision around the model's forward",
        choices=PRECISIONS,
        magic_option=True,
    ),
    Setting("threads", int, "torch.set_num_threads for the run", 1),
    Setting("pin_memory", bool, "training loader rebuilt with pinned memory", loader=True),
    Setting(
        "persistent_workers",
        bool,
        "training loader keeps its workers between epochs",
        loader=True,
    ),
    Setting("prefetch_factor", int, "batches each worker loads ahead", 1, loader=True),
    Setting("fused", bool, "optimizers created by the cell get fused=True"),
)
BY_NAME = {s.name: s for s in SETTINGS}
SETTING_KEYS = tuple(s.name for s in SETTINGS)
LOADER_KEYS = tuple(s.name for s in SETTINGS if s.loader)
MAGIC_SETTINGS = tuple(s for s in SETTINGS if s.magic_option)


def check_setting(setting: dict[str, Any]) -> None:
    """Validate every known key of a what-if setting."""
    for key, value in setting.items():
        if key in BY_NAME:
            BY_NAME[key].check(value)
