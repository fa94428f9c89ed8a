"""Global instrumentation: the only code that runs inside the user's epoch.

Every probe appends events to a :class:`~epochmagic.capture.recorder.Recorder` and keeps
just enough live state to stop the cell at a step boundary (the training
loader's second pass, ``--steps``, ``--max-seconds``). All patches and hooks are
installed by :meth:`Probes.__enter__` and removed by ``__exit__`` whatever
happened.

One module per target, each saying why it probes where it does:
:mod:`~epochmagic.capture.probes.loader` (DataLoader passes, ``--skip-epochs``),
:mod:`~epochmagic.capture.probes.forward` (root modules, ``--modules``),
:mod:`~epochmagic.capture.probes.backward`, :mod:`~epochmagic.capture.probes.optimizer`,
:mod:`~epochmagic.capture.probes.transfer` and :mod:`~epochmagic.capture.probes.sync`;
:mod:`~epochmagic.capture.probes.state` holds what they share and
:mod:`~epochmagic.capture.probes.core` the :class:`Probes` that wires them.

Compiled code (``torch.compile``) never runs a probe: every wrapper steps
aside while dynamo traces it and its own frame is never compiled
(:mod:`epochmagic.capture.patching`); where compiled code runs is marked from
outside (:mod:`epochmagic.capture.compilewatch`).
"""

from __future__ import annotations

from epochmagic.capture.probes.core import Probes, accelerator_available
from epochmagic.capture.probes.loader import loader_keys
from epochmagic.capture.probes.state import (
    DEFAULT_NO_LOADER_SECONDS,
    DEVICE_MEMORY_EVERY_S,
    MEMORY_EVERY_S,
    StopCell,
)
from epochmagic.capture.syncwatch import caller_outside

__all__ = [
    "DEFAULT_NO_LOADER_SECONDS",
    "DEVICE_MEMORY_EVERY_S",
    "MEMORY_EVERY_S",
    "Probes",
    "StopCell",
    "accelerator_available",
    "caller_outside",
    "loader_keys",
]
