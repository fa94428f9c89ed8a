"""What-if runs: the same cell again under another setting, measured.

``EpochProfile.rerun`` and ``sweep`` land here through the profile's
``Session`` (``epochmagic/session/session.py``), which the magic gives
:data:`WHATIFS`. A run re-executes the cell in the user's namespace with the
training loader rebuilt (``loaders.rebuild``), autocast around root forwards
for another precision, ``torch.set_num_threads`` and fused optimizer copies as
asked (``epochmagic/whatif/plan.py``), everything snapshotted before and
restored after (``Session.run("whatif")``); its output is captured. The user's
loader, model and optimizer objects end exactly as they were.

This module is the layer's front: ``rerun``, ``sweep``, ``resolve``,
``label``, ``DEFAULT_STEPS``, ``Unsupported`` and ``check_precision`` are
importable from here.
"""

from __future__ import annotations

from epochmagic.capture.loaders import Unsupported
from epochmagic.model.vocabulary import LOADER_KEYS, SETTING_KEYS
from epochmagic.whatif.changes import check_precision
from epochmagic.whatif.plan import DEFAULT_STEPS, default_steps, label, resolve
from epochmagic.whatif.rerun import rerun, run_whatif, session_of
from epochmagic.whatif.sweep import rank, run_sweep, sweep


class WhatIfs:
    """What a Session calls for ``rerun`` and ``sweep`` (its ``WhatIfs``)."""

    rerun = staticmethod(run_whatif)
    sweep = staticmethod(run_sweep)


WHATIFS = WhatIfs()

__all__ = [
    "DEFAULT_STEPS",
    "LOADER_KEYS",
    "SETTING_KEYS",
    "WHATIFS",
    "Unsupported",
    "WhatIfs",
    "check_precision",
    "default_steps",
    "label",
    "rank",
    "rerun",
    "resolve",
    "session_of",
    "sweep",
]
