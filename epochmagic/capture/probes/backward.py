"""Backward probe: ``torch.autograd.backward`` and ``torch.autograd.grad``.

``Tensor.backward`` calls ``torch.autograd.backward`` through the module
attribute, so one wrapper sees both (one less layer per step). The outermost
backward of a step marks its loader pass as the training loader's; in a loop
without an optimizer it counts the steps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.compiler import is_compiling

from epochmagic.capture import recorder as r
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes.forward import ForwardProbe
from epochmagic.capture.probes.loader import LoaderProbe
from epochmagic.capture.probes.state import ProbeState


class BackwardProbe:
    """Backward calls; while epochs are skipped, the one that tells the
    training loader's pass apart."""

    def __init__(self, state: ProbeState, loader: LoaderProbe, forward: ForwardProbe) -> None:
        self.state = state
        self.loader = loader
        self.forward = forward
        self.depth = 0  # backward call depth: only the outermost is a step's

    def install(self, patches: Patches) -> None:
        patches.replace(torch.autograd, "backward", self._wrap(torch.autograd.backward))
        patches.replace(torch.autograd, "grad", self._wrap(torch.autograd.grad))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        bw = self
        st = self.state
        ld = self.loader
        fw = self.forward
        rec = st.rec

        def backward(*args: Any, **kwargs: Any) -> Any:
            if is_compiling() or threading.get_ident() != st.main:
                return original(*args, **kwargs)
            if not st.active and st.idle and st.no_loader_to_skip:
                if bw.depth == 0:
                    st.begin_measuring()  # a backward-clocked loop's step starts
            if not st.active:
                if not st.idle:
                    return original(*args, **kwargs)
                outer = bw.depth == 0
                bw.depth += 1
                try:
                    return original(*args, **kwargs)
                finally:
                    bw.depth -= 1
                    if outer:
                        ld.idle_trained_step()
            outer = bw.depth == 0
            if outer:
                st.before_backward()
            bw.depth += 1
            rec.mark(r.BWD_ENTER)
            try:
                return original(*args, **kwargs)
            finally:
                rec.mark(r.BWD_EXIT)
                bw.depth -= 1
                if outer:
                    st.after_backward()
                    fw.end_discovery()

        backward.__wrapped__ = original  # type: ignore[attr-defined]  # a function attribute mypy does not know
        return backward
