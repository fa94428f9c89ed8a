"""Sync probes (with a device clock): every call that waited for the device,
as a SYNC event at the moment it returned, at the user's line. A copy's
wait is flagged as the transfer's.

The device clock reports what torch's sync debug mode finds
(:mod:`epochmagic.capture.syncwatch`); ``Tensor.item`` also reads the clock
as it starts, so the wait inside it is exact; an explicit
``torch.cuda.synchronize()`` is a sync too (torch's debug mode leaves it
out: it is deliberate, the loop still waits in it).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch
from torch.compiler import is_compiling

from epochmagic.capture import recorder as r
from epochmagic.capture.cudaclock import DeviceClock
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes.state import ProbeState
from epochmagic.capture.probes.transfer import TransferProbe
from epochmagic.capture.syncwatch import caller_outside


def install_sync_watch(
    patches: Patches, st: ProbeState, xf: TransferProbe, device: DeviceClock
) -> None:
    """``xf``: the transfer probe, which says whether a copy is running."""
    rec = st.rec

    def on_sync(filename: str, lineno: int) -> None:
        if st.active:
            rec.mark(r.SYNC, None, (filename, lineno, xf.in_transfer))

    patches.enter(device.watch_syncs(on_sync))
    original_item = torch.Tensor.item
    on_device = device.tensor_on_device

    def item(t: Any) -> Any:
        if is_compiling():
            return original_item(t)
        if st.active and on_device(t) and threading.get_ident() == st.main:
            rec.clock()
        return original_item(t)

    patches.replace(torch.Tensor, "item", item)
    original_sync = torch.cuda.synchronize

    def synchronize(*args: Any, **kwargs: Any) -> Any:
        if is_compiling() or not st.active or threading.get_ident() != st.main:
            return original_sync(*args, **kwargs)
        before = len(rec.events)
        rec.clock()  # the wait inside is exact, as for .item()
        out = original_sync(*args, **kwargs)
        if not any(e[1] == r.SYNC for e in rec.events[before:]):  # not reported already
            on_sync(*caller_outside(sys._getframe(1)))
        return out

    patches.replace(torch.cuda, "synchronize", synchronize)
