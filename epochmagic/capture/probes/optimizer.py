"""Optimizer probes: torch's global optimizer step hooks, ``zero_grad``, and
``GradScaler.step``.

``optimizer.step`` itself is never replaced: LR schedulers detect that and
warn. torch's global optimizer step hooks see every optimizer instead.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.optim.optimizer as optim_mod
from torch.compiler import is_compiling

from epochmagic.capture import recorder as r
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes.forward import ForwardProbe
from epochmagic.capture.probes.state import ProbeState


class OptimizerProbe:
    """Optimizer steps (in a loop without a training loader, the first
    optimizer to step counts the steps) and the GradScaler's skipped steps."""

    def __init__(self, state: ProbeState, forward: ForwardProbe) -> None:
        self.state = state
        self.forward = forward
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        self.scalers: dict[int, bool] = {}  # GradScalers that stepped -> enabled
        self.scaler_skips = 0

    def install(self, patches: Patches) -> None:
        self._install_step_hooks(patches)
        zero = self._wrap_zero
        patches.replace(torch.optim.Optimizer, "zero_grad", zero(torch.optim.Optimizer.zero_grad))
        patches.replace(torch.nn.Module, "zero_grad", zero(torch.nn.Module.zero_grad), drop=True)
        scaler_cls = torch.amp.GradScaler
        patches.replace(scaler_cls, "step", self._wrap_scaler_step(scaler_cls.step))

    def trained_param_ids(self) -> set[int]:
        ids: set[int] = set()
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                ids.update(id(p) for p in group["params"])
        return ids

    def _install_step_hooks(self, patches: Patches) -> None:
        st = self.state
        fw = self.forward
        rec = st.rec
        optimizers = self.optimizers

        def pre(opt: Any, args: Any, kwargs: Any) -> None:
            if is_compiling() or not st.active or threading.get_ident() != st.main:
                return
            optimizers.setdefault(id(opt), opt)
            rec.mark(r.OPT_ENTER, opt)

        def post(opt: Any, args: Any, kwargs: Any) -> None:
            if is_compiling() or threading.get_ident() != st.main:
                return
            if not st.active:
                if st.idle and st.no_loader_to_skip:
                    st.begin_measuring()  # after this step
                return
            now = rec.mark(r.OPT_EXIT, opt)
            fw.end_discovery()  # every model of the step has been called by now
            st.after_step(opt, now)

        patches.hook(optim_mod.register_optimizer_step_pre_hook(pre))
        patches.hook(optim_mod.register_optimizer_step_post_hook(post))

    def _wrap_zero(self, original: Callable[..., Any]) -> Callable[..., Any]:
        # torch runs Optimizer.zero_grad with dynamo disabled (a graph break
        # in compiled code); ours is disabled the same way, through the
        # same decorator, so dynamo sees the very code it guards on.
        inner: Any = getattr(original, "__wrapped__", None)
        disabled = inner is not None and hasattr(torch, "_disable_dynamo")
        call: Any = inner if disabled else original
        st = self.state
        rec = st.rec

        def zero_grad(obj: Any, *args: Any, **kwargs: Any) -> Any:
            if is_compiling() or not st.active or threading.get_ident() != st.main:
                return call(obj, *args, **kwargs)
            rec.mark(r.ZERO_ENTER)
            try:
                return call(obj, *args, **kwargs)
            finally:
                rec.mark(r.ZERO_EXIT)

        if disabled:  # named as torch's, so a graph break there reads the same
            return torch._disable_dynamo(functools.wraps(inner)(zero_grad))
        return zero_grad

    def _wrap_scaler_step(self, original: Callable[..., Any]) -> Callable[..., Any]:
        op = self
        st = self.state
        rec = st.rec

        def scaler_step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            if is_compiling() or not st.active:
                return original(scaler, optimizer, *args, **kwargs)
            before = len(rec.events)
            op.scalers[id(scaler)] = bool(scaler.is_enabled())
            out = original(scaler, optimizer, *args, **kwargs)
            if scaler.is_enabled() and not any(e[1] == r.OPT_EXIT for e in rec.events[before:]):
                op.scaler_skips += 1
                rec.mark(r.SCALER_SKIP, optimizer)
            return out

        return scaler_step
