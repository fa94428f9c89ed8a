"""Transfer probe: host-to-device copies through ``Tensor.to`` and
``Tensor.cuda``, timed and tallied (count, bytes, pinned, non_blocking)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.compiler import is_compiling

from epochmagic.capture import recorder as r
from epochmagic.capture.batches import non_blocking
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes.state import ProbeState


class TransferProbe:
    """Copies from the host to a device, as ``transfer`` phases."""

    def __init__(self, state: ProbeState) -> None:
        self.state = state
        # host-to-device copies: [count, bytes, pinned bytes, non_blocking bytes]
        self.transfers = [0, 0, 0, 0]
        self.in_transfer = False  # a copy runs: a sync inside it is the copy's wait

    def install(self, patches: Patches) -> None:
        patches.replace(torch.Tensor, "to", self._wrap(torch.Tensor.to))
        patches.replace(torch.Tensor, "cuda", self._wrap(torch.Tensor.cuda))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        xf = self
        st = self.state
        rec = st.rec

        def move(t: Any, *args: Any, **kwargs: Any) -> Any:
            if (
                is_compiling()
                or t.device.type != "cpu"
                or not st.active
                or threading.get_ident() != st.main
            ):
                return original(t, *args, **kwargs)
            at = len(rec.events)  # the enter goes here, before anything the copy records
            t0 = rec.clock()
            xf.in_transfer = True
            try:
                out = original(t, *args, **kwargs)
            finally:
                xf.in_transfer = False
            if isinstance(out, torch.Tensor) and out.device.type != "cpu":
                rec.events.insert(at, (t0, r.XFER_ENTER, None, None))
                rec.mark(r.XFER_EXIT)
                size = t.numel() * t.element_size()
                tally = xf.transfers
                tally[0] += 1
                tally[1] += size
                if t.is_pinned():
                    tally[2] += size
                if non_blocking(args, kwargs):
                    tally[3] += size
            return out

        return move
