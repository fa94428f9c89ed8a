"""Global instrumentation: the only code that runs inside the user's epoch.

Every probe appends events to a :class:`~epochmagic.capture.recorder.Recorder` and keeps
just enough live state to stop the cell at a step boundary (the training
loader's second pass, ``--steps``, ``--max-seconds``). All patches and hooks are
installed by :meth:`Probes.__enter__` and removed by ``__exit__`` whatever
happened.

Why these probes, and not others:

* Root modules are timed by patching ``__call__`` on the *class* of each root
  (found in the namespace, or by a global pre-hook that is removed after the
  first training step). torch's global module hooks fire for every submodule and
  push every call onto ``Module._call_impl``'s slow path (+6-16 % measured on a
  101-module MLP); per-instance hooks would be copied by ``copy.deepcopy`` (an
  EMA model) and outlive the run. Classes are shared by such copies and the
  patch is one ``delattr`` away from gone.
* ``optimizer.step`` itself is never replaced: LR schedulers detect that and
  warn. torch's global optimizer step hooks see every optimizer instead.
* ``_BaseDataLoaderIter.__next__`` is the one place every DataLoader iterator
  hands out a batch; ``DataLoader.__iter__`` is where a pass (and its worker
  start-up) begins.
* Compiled code (``torch.compile``) never runs a probe: every wrapper steps
  aside while dynamo traces it and its own frame is never compiled
  (:mod:`epochmagic.capture.patching`); where compiled code runs is marked from
  outside (:mod:`epochmagic.capture.compilewatch`).
* ``--skip-epochs N``: the probes stay idle (no events, no clock readings, no
  global hooks) and only count the training loader's passes until pass N+1
  starts; measuring begins there.
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.optim.optimizer as optim_mod
from torch.compiler import is_compiling
from torch.utils.data import DataLoader
from torch.utils.data import dataloader as dl_mod

from epochmagic.capture import recorder as r
from epochmagic.capture.batches import (
    autocast_precision,
    batch_info,
    first_tensor_arg,
    non_blocking,
    signature,
)
from epochmagic.capture.compilewatch import CompileWatch
from epochmagic.capture.cudaclock import DeviceClock, caller_outside
from epochmagic.capture.patching import Patches
from epochmagic.capture.recorder import MemoryReader, Pass, Recorder, passes

DEFAULT_NO_LOADER_SECONDS = 60.0
MEMORY_EVERY_S = 0.01
DEVICE_MEMORY_EVERY_S = 0.05  # memory_stats() builds a dict of every allocator counter


class StopCell(BaseException):
    """Ends the profiled cell at a step boundary.

    A BaseException so that the user's ``except Exception`` blocks (and
    libraries' error handling) let it through, like KeyboardInterrupt.
    """

    MESSAGES = {
        "epoch": "epochmagic: one epoch measured, stopping the cell",
        "steps": "epochmagic: --steps reached, stopping the cell",
        "seconds": "epochmagic: time limit reached, stopping the cell",
    }

    def __init__(self, reason: str) -> None:
        # Libraries that log the exception (Ignite does) print this, not a code.
        super().__init__(self.MESSAGES.get(reason, f"epochmagic: stopping the cell ({reason})"))
        self.reason = reason


def accelerator_available() -> bool:
    """Any accelerator torch can copy batches to (``torch.accelerator`` is
    torch 2.6+; before it, CUDA and MPS are asked directly)."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None:
        return bool(acc.is_available())
    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available()))


def loader_keys(loader: Any) -> frozenset[tuple[str, int]]:
    """Identity of a training loader: itself, or any loader over its dataset.

    Libraries such as skorch build a fresh DataLoader every epoch.
    """
    keys = {("loader", id(loader))}
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        keys.add(("dataset", id(dataset)))
    return frozenset(keys)


class Probes:
    """Installs the probes for one run of a cell; a context manager."""

    def __init__(
        self,
        rec: Recorder,
        *,
        max_steps: int | None = None,
        max_seconds: float | None = None,
        loader_name: str | None = None,
        user_ns: dict[str, Any] | None = None,
        watch_transfers: bool | None = None,
        substitute: Callable[[Any], Any] | None = None,
        autocast: Callable[[], Any] | None = None,
        on_step: Callable[[int], None] | None = None,
        time_modules: bool = False,
        device: DeviceClock | None = None,
        skip_epochs: int = 0,
        on_measure: Callable[[], None] | None = None,
    ) -> None:
        self.rec = rec
        self.device = device  # CUDA markers and sync detection, None on the CPU
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.loader_name = loader_name
        self.user_ns = user_ns if user_ns is not None else {}
        if watch_transfers is None:
            watch_transfers = device is not None or accelerator_available()
        self.watch_transfers = watch_transfers
        # what-if hooks: a rebuilt loader for the training loader, an autocast
        # context around root forwards, a progress callback at step boundaries
        self.substitute = substitute
        self.autocast = autocast
        self.on_step = on_step
        self.time_modules = time_modules
        self.module_spans: list[tuple[float, float, int]] = []  # (enter, exit, module id)
        self.module_objects: dict[int, Any] = {}
        self.grad_marks: list[tuple[float, int]] = []  # (time, module id) as gradients arrive
        # live state
        self.passes: dict[int, Pass] = {}
        self.current: Pass | None = None  # the pass that handed out the latest batch
        self.named_pass: Pass | None = None  # the --loader pass in progress
        self.trained_keys: set[tuple[str, int]] = set()
        self.roots: dict[int, torch.nn.Module] = {}
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        self.clock_opt: Any = None
        self.clock_steps = 0
        self.backward_steps = 0
        self.stopped: StopCell | None = None
        self.stop_time: float | None = None
        self.scaler_skips = 0
        self.scalers: dict[int, bool] = {}  # GradScalers that stepped -> enabled
        # host-to-device copies: [count, bytes, pinned bytes, non_blocking bytes]
        self.transfers = [0, 0, 0, 0]
        self._in_transfer = False
        self.precision: str | None = None
        # the first training forward: its module and its inputs' shapes, so the
        # model's FLOPs can be counted later on inputs of the same shape
        self.first_call: tuple[Any, Any, Any, Any] | None = None
        self.named_loader_seen = False
        self._depth = 0  # root-module call depth
        self._bwd_depth = 0
        self._opt_depth = 0
        self._main = threading.get_ident()
        # --skip-epochs: passes of the training loader still to run unmeasured
        self.skip_epochs = skip_epochs
        self.skipped_epochs = 0
        self.idle = skip_epochs > 0
        self.measured = not self.idle  # measuring began (at once, or after skipped epochs)
        self.on_measure = on_measure  # starts the clocks when measuring begins
        self._idle_passes: dict[int, frozenset[tuple[str, int]]] = {}
        self._idle_current: frozenset[tuple[str, int]] | None = None
        self._idle_trained: set[tuple[str, int]] = set()
        self.no_loader_to_skip = False  # --skip-epochs on a loop without a training loader
        # Wrappers someone captured during the run (a bound __call__ in a
        # torch.compile'd module, `from torch.autograd import backward`) pass
        # straight through once the run is over.
        self.active = False
        self.patches = Patches()
        self.compile_watch = CompileWatch(
            self.patches, rec.clock, self._on_compiled_code, self._on_dynamo
        )
        self.notes: list[str] = []
        self._patched_classes: dict[type, Any] = {}
        self._discovery: list[Any] = []
        self._mem = MemoryReader()
        self._last_memory = float("-inf")

    # -- install / remove -------------------------------------------------
    def __enter__(self) -> Probes:
        self.active = not self.idle
        try:
            self._install()
        except BaseException:
            self.active = False
            self.patches.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self.idle = False
        try:
            self.patches.close()
        finally:
            self._mem.close()
            self.passes.clear()
            self._idle_passes.clear()

    def _install(self) -> None:
        self._install_loader()
        self._install_backward()
        self._install_optimizer()
        if self.watch_transfers:
            self._install_transfer()
        if self.device is not None:
            self._install_sync_watch(self.device)
        for value in list(self.user_ns.values()):
            if isinstance(value, torch.nn.Module):
                self._adopt_root_class(type(value))
        self.compile_watch.recording = not self.idle
        self.compile_watch.install()
        if not self.idle:
            self._install_global_hooks()

    def _install_global_hooks(self) -> None:
        """Global module hooks: root discovery until the first training step,
        and ``--modules``. Not while epochs are skipped: they slow every
        module call."""
        self._start_discovery()
        if self.time_modules:
            self._install_module_timing()

    def _on_dynamo(self, config: Any) -> None:
        """Dynamo is loaded: with its hook guards on (not the default), hidden
        global hooks would make it recompile at every call, so none stay."""
        if getattr(config, "skip_nnmodule_hook_guards", True):
            return
        self._end_discovery()
        if self.time_modules:
            self.time_modules = False
            self.notes.append(
                "--modules was switched off: torch._dynamo.config.skip_nnmodule_hook_guards "
                "is False, so global module hooks would make compiled code recompile"
            )

    def _on_compiled_code(self, entering: bool) -> None:
        if self.active:
            self.rec.mark(r.CMP_ENTER if entering else r.CMP_EXIT)

    def _install_module_timing(self) -> None:
        """``--modules``: every submodule's forward, inclusive, by module. It
        costs what torch's global hooks cost (+6-16 % measured), hence opt-in."""
        mm = torch.nn.modules.module
        probes = self
        clock = self.rec.clock
        stack: list[float] = []

        def pre(module: Any, args: Any) -> None:
            if is_compiling():
                return
            if threading.get_ident() == probes._main:
                stack.append(clock())

        def post(module: Any, args: Any, output: Any) -> None:
            if is_compiling() or threading.get_ident() != probes._main or not stack:
                return
            # raw clock times, not durations: on CUDA they move to device time
            probes.module_spans.append((stack.pop(), clock(), id(module)))
            probes.module_objects.setdefault(id(module), module)
            # backward: the moment the gradient reaches a leaf layer's output is
            # where its backward starts (a tensor hook: unlike module backward
            # hooks it does not wrap the output, so in-place ops stay legal)
            if (
                isinstance(output, torch.Tensor)
                and output.requires_grad
                and probes.active
                and not next(module.children(), None)
            ):
                key = id(module)

                def mark(grad: Any, k: int = key) -> None:
                    if probes.active:
                        probes.grad_marks.append((clock(), k))

                output.register_hook(mark)

        self.patches.hook(mm.register_module_forward_pre_hook(pre), module_hook=True)
        self.patches.hook(mm.register_module_forward_hook(post, always_call=True), module_hook=True)

    # -- data -----------------------------------------------------------------
    def _install_loader(self) -> None:
        orig_iter = DataLoader.__iter__
        orig_next = dl_mod._BaseDataLoaderIter.__next__
        probes = self
        rec = self.rec

        def __iter__(loader: Any) -> Any:
            if is_compiling() or threading.get_ident() != probes._main:
                return orig_iter(loader)
            if not probes.active:
                if not probes.idle or not probes._idle_iter(loader):
                    it = orig_iter(loader)
                    if probes.idle:
                        probes._idle_passes[id(it)] = probes._keys_for(loader)
                    return it
            keys = probes._keys_for(loader)
            probes._depth = 0
            if probes.stopped is not None or keys & probes.trained_keys:
                probes._stop("epoch")
            if probes.substitute is not None:  # a what-if's rebuilt training loader
                loader = probes.substitute(loader) or loader
            p = Pass(loader, keys, rec.clock())
            rec.events.append((p.start, r.ITER_ENTER, p, None))
            try:
                it = orig_iter(loader)
            finally:
                rec.mark(r.ITER_EXIT, p)
            probes.passes[id(it)] = p
            p.iterator = it
            return it

        def __next__(it: Any) -> Any:
            if is_compiling() or threading.get_ident() != probes._main:
                return orig_next(it)
            if not probes.active:
                if probes.idle:
                    probes._idle_current = probes._idle_passes.get(id(it))
                return orig_next(it)
            p = probes.passes.get(id(it))
            if p is None or p.iterator is not it:
                # an iterator made without DataLoader.__iter__ (a subclass that
                # overrides it): its pass starts with its first batch
                keys = frozenset({("dataset", id(getattr(it, "_dataset", None)))})
                if keys & probes.trained_keys:
                    probes._stop("epoch")
                p = Pass(None, keys, rec.clock())
                p.iterator = it
                probes.passes[id(it)] = p
            probes._depth = 0
            t = rec.mark(r.NEXT_ENTER, p)
            probes._sample_memory(t)
            if probes.stopped is not None:
                probes._stop(probes.stopped.reason)
            if p.trained:
                done = _steps_done(p)
                if probes.on_step is not None:
                    probes.on_step(done)
                probes._check_limits(done, t, None)
            try:
                batch = orig_next(it)
            except StopIteration:
                p.exhausted = True
                if probes.current is p:
                    probes.current = None
                if probes.named_pass is p:
                    probes.named_pass = None
                rec.mark(r.NEXT_STOP, p)
                raise
            except BaseException:
                rec.mark(r.NEXT_EXIT, p, None)
                raise
            p.yielded += 1
            probes.current = p
            if ("named", 0) in p.keys:
                probes.named_pass = p
            rec.mark(r.NEXT_EXIT, p, batch_info(batch))
            return batch

        self.patches.replace(DataLoader, "__iter__", __iter__)
        self.patches.replace(dl_mod._BaseDataLoaderIter, "__next__", __next__)

    def _keys_for(self, loader: Any) -> frozenset[tuple[str, int]]:
        keys = loader_keys(loader)
        if self.loader_name is not None:
            named = self.user_ns.get(self.loader_name)
            if named is not None and keys & loader_keys(named):
                self.named_loader_seen = True
                keys = keys | frozenset({("named", 0)})
        return keys

    # -- --skip-epochs --------------------------------------------------------
    def _idle_iter(self, loader: Any) -> bool:
        """A pass starts while epochs are skipped; True when it is the one to
        measure (the training loader's pass N+1)."""
        keys = self._keys_for(loader)
        if not keys & self._idle_trained:
            return False
        self.skipped_epochs += 1
        if self.skipped_epochs < self.skip_epochs:
            return False
        self._begin_measuring()
        return True

    def _idle_trained_step(self) -> None:
        """A backward finished while idle: its loader pass is the training
        loader's. Without one there are no epochs to skip: measuring starts at
        the next step boundary (the optimizer's step, else the next backward)."""
        if self._idle_current is not None:
            self._idle_trained |= self._idle_current
        elif not self._idle_trained:
            self.no_loader_to_skip = True

    @property
    def idle_epochs(self) -> int:
        """Epochs of the training loader that ran unmeasured (--skip-epochs)."""
        return self.skipped_epochs + (1 if self._idle_trained and not self.measured else 0)

    def _begin_measuring(self) -> None:
        self.idle = False
        self.measured = True
        self._idle_passes.clear()
        if self.on_measure is not None:
            self.on_measure()
        self.compile_watch.recording = True
        self.compile_watch.reset_baseline()
        self.active = True
        self._install_global_hooks()

    # -- modules ------------------------------------------------------------
    def _adopt_root_class(self, cls: type) -> None:
        if cls in self._patched_classes:
            return
        original = cls.__call__
        probes = self
        rec = self.rec

        def __call__(module: Any, *args: Any, **kwargs: Any) -> Any:
            if (
                is_compiling()
                or probes._depth
                or not probes.active
                or threading.get_ident() != probes._main
            ):
                return original(module, *args, **kwargs)
            probes._depth = 1
            probes._enter_forward(module, args, kwargs)
            try:
                if probes.autocast is None:
                    return original(module, *args, **kwargs)
                with probes.autocast():
                    return original(module, *args, **kwargs)
            finally:
                probes._depth = 0
                rec.mark(r.FWD_EXIT, module)

        try:
            self.patches.replace(cls, "__call__", __call__, hide=True)
        except (TypeError, AttributeError):  # extension types refuse class attributes
            return
        self._patched_classes[cls] = original

    def _sample_memory(self, now: float) -> None:
        """Read memory at a step boundary (RSS, or the CUDA allocator's when
        the run has a device clock), at most every MEMORY_EVERY_S /
        DEVICE_MEMORY_EVERY_S: at hundreds of steps per second a read per step
        would cost more than the rest of the probes."""
        every = MEMORY_EVERY_S if self.device is None else DEVICE_MEMORY_EVERY_S
        if now - self._last_memory >= every:
            self._last_memory = now
            value = self._mem.rss() if self.device is None else self.device.memory()
            self.rec.events.append((now, r.MEM, None, value))

    def _enter_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        grad = torch.is_grad_enabled()
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if first is None:
            first = first_tensor_arg(args, kwargs)
        samples, tokens = 0, None
        if first is not None:
            shape = first.shape
            if shape:
                samples = shape[0]
                if len(shape) >= 2 and not first.is_floating_point():
                    tokens = first.numel()
        if grad and self.precision is None and module.training:
            self.precision = autocast_precision(first)
            self.first_call = (
                module,
                signature(args),
                signature(tuple(kwargs.values())),
                tuple(kwargs),
            )
        self.roots.setdefault(id(module), module)
        self.rec.mark(r.FWD_ENTER, module, (grad, bool(module.training), samples, tokens))

    def _start_discovery(self) -> None:
        """Find root modules the namespace did not show (built by the cell or a
        library) with global hooks, removed after the first training step."""
        # torch warns that a torch.compile'd module called while global hooks
        # exist fires them twice; ours handle that, so the warning is noise.
        warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there")
        entry = warnings.filters[0]

        def forget_filter() -> None:
            if entry in warnings.filters:
                warnings.filters.remove(entry)  # type: ignore[attr-defined]
                warnings._filters_mutated()  # type: ignore[attr-defined]

        self.patches.on_close(forget_filter)
        probes = self
        rec = self.rec
        mm = torch.nn.modules.module

        def pre(module: Any, args: Any) -> None:
            if (
                is_compiling()
                or probes._depth
                or not probes.active
                or threading.get_ident() != probes._main
            ):
                return
            probes._depth = 1
            probes._discovering = module
            probes._enter_forward(module, tuple(args), {})
            probes._adopt_root_class(type(module))
            if probes.autocast is not None:
                probes._discovery_ctx = probes.autocast()
                probes._discovery_ctx.__enter__()

        def post(module: Any, args: Any, output: Any) -> None:
            if is_compiling():
                return
            if getattr(probes, "_discovering", None) is module and probes._depth == 1:
                probes._discovering = None
                probes._depth = 0
                if probes._discovery_ctx is not None:
                    ctx, probes._discovery_ctx = probes._discovery_ctx, None
                    ctx.__exit__(None, None, None)
                rec.mark(r.FWD_EXIT, module)

        self._discovering: Any = None
        self._discovery_ctx: Any = None
        self._discovery = [
            self.patches.hook(mm.register_module_forward_pre_hook(pre), module_hook=True),
            self.patches.hook(
                mm.register_module_forward_hook(post, always_call=True), module_hook=True
            ),
        ]

    def _end_discovery(self) -> None:
        for h in self._discovery:
            self.patches.forget_module_hook(h)
        self._discovery = []

    # -- backward -----------------------------------------------------------
    def _install_backward(self) -> None:
        probes = self

        def wrap(original: Any) -> Any:
            def backward(*args: Any, **kwargs: Any) -> Any:
                if is_compiling() or threading.get_ident() != probes._main:
                    return original(*args, **kwargs)
                if not probes.active and probes.idle and probes.no_loader_to_skip:
                    if probes._bwd_depth == 0:
                        probes._begin_measuring()  # a backward-clocked loop's step starts
                if not probes.active:
                    if not probes.idle:
                        return original(*args, **kwargs)
                    outer = probes._bwd_depth == 0
                    probes._bwd_depth += 1
                    try:
                        return original(*args, **kwargs)
                    finally:
                        probes._bwd_depth -= 1
                        if outer:
                            probes._idle_trained_step()
                outer = probes._bwd_depth == 0
                if outer:
                    probes._before_backward()
                probes._bwd_depth += 1
                probes.rec.mark(r.BWD_ENTER)
                try:
                    return original(*args, **kwargs)
                finally:
                    probes.rec.mark(r.BWD_EXIT)
                    probes._bwd_depth -= 1
                    if outer:
                        probes._after_backward()

            backward.__wrapped__ = original  # type: ignore[attr-defined]
            return backward

        # Tensor.backward calls torch.autograd.backward through the module
        # attribute, so one wrapper sees both (one less layer per step).
        self.patches.replace(torch.autograd, "backward", wrap(torch.autograd.backward))
        self.patches.replace(torch.autograd, "grad", wrap(torch.autograd.grad))

    def _before_backward(self) -> None:
        # Backward-clocked loops (no optimizer at all): backward N+1 starting
        # means N steps are done.
        if self.clock_opt is None and not self._loader_clock():
            self._check_limits(self.backward_steps, self.rec.clock(), DEFAULT_NO_LOADER_SECONDS)

    def _after_backward(self) -> None:
        p = self.named_pass if self.loader_name is not None else self.current
        if p is not None:
            p.units += 1
        self._mark_trained()
        self._end_discovery()  # every model of the step has been called by now
        if self.clock_opt is None and not self._loader_clock():
            self.backward_steps += 1

    def _mark_trained(self) -> None:
        p = self.named_pass if self.loader_name is not None else self.current
        if p is None or p.trained:
            return
        p.trained = True
        self.trained_keys |= p.keys

    def _loader_clock(self) -> bool:
        p = self.named_pass if self.loader_name is not None else self.current
        return p is not None and p.trained

    # -- optimizer ----------------------------------------------------------
    def _install_optimizer(self) -> None:
        probes = self
        rec = self.rec

        def pre(opt: Any, args: Any, kwargs: Any) -> None:
            if is_compiling() or not probes.active or threading.get_ident() != probes._main:
                return
            probes._opt_depth += 1
            probes.optimizers.setdefault(id(opt), opt)
            rec.mark(r.OPT_ENTER, opt)

        def post(opt: Any, args: Any, kwargs: Any) -> None:
            if is_compiling() or threading.get_ident() != probes._main:
                return
            if not probes.active:
                if probes.idle and probes.no_loader_to_skip:
                    probes._begin_measuring()  # after this step
                return
            probes._opt_depth -= 1
            probes._after_step(opt, rec.mark(r.OPT_EXIT, opt))

        self.patches.hook(optim_mod.register_optimizer_step_pre_hook(pre))
        self.patches.hook(optim_mod.register_optimizer_step_post_hook(post))

        def wrap_zero(original: Any) -> Any:
            # torch runs Optimizer.zero_grad with dynamo disabled (a graph break
            # in compiled code); ours is disabled the same way, through the
            # same decorator, so dynamo sees the very code it guards on.
            inner: Any = getattr(original, "__wrapped__", None)
            disabled = inner is not None and hasattr(torch, "_disable_dynamo")
            call: Any = inner if disabled else original

            def zero_grad(obj: Any, *args: Any, **kwargs: Any) -> Any:
                if is_compiling() or not probes.active or threading.get_ident() != probes._main:
                    return call(obj, *args, **kwargs)
                rec.mark(r.ZERO_ENTER)
                try:
                    return call(obj, *args, **kwargs)
                finally:
                    rec.mark(r.ZERO_EXIT)

            if disabled:  # named as torch's, so a graph break there reads the same
                return torch._disable_dynamo(functools.wraps(inner)(zero_grad))
            return zero_grad

        self.patches.replace(
            torch.optim.Optimizer, "zero_grad", wrap_zero(torch.optim.Optimizer.zero_grad)
        )
        self.patches.replace(
            torch.nn.Module, "zero_grad", wrap_zero(torch.nn.Module.zero_grad), drop=True
        )

        scaler_cls = torch.amp.GradScaler
        original_scaler_step = scaler_cls.step

        def scaler_step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            if is_compiling() or not probes.active:
                return original_scaler_step(scaler, optimizer, *args, **kwargs)
            before = len(rec.events)
            probes.scalers[id(scaler)] = bool(scaler.is_enabled())
            out = original_scaler_step(scaler, optimizer, *args, **kwargs)
            if scaler.is_enabled() and not any(e[1] == r.OPT_EXIT for e in rec.events[before:]):
                probes.scaler_skips += 1
                rec.mark(r.SCALER_SKIP, optimizer)
            return out

        self.patches.replace(scaler_cls, "step", scaler_step)

    def _after_step(self, opt: Any, now: float) -> None:
        self._mark_trained()
        self._end_discovery()
        if self._loader_clock():
            return
        if self.clock_opt is None:
            self.clock_opt = opt
        if opt is self.clock_opt:
            self.clock_steps += 1
            if self.on_step is not None:
                self.on_step(self.clock_steps)
            self._sample_memory(now)  # at the step's end: no clock reading of its own
            self._check_limits(self.clock_steps, now, DEFAULT_NO_LOADER_SECONDS)

    # -- transfers -------------------------------------------------------------
    def _install_transfer(self) -> None:
        probes = self
        rec = self.rec

        def wrap(original: Any) -> Any:
            def move(t: Any, *args: Any, **kwargs: Any) -> Any:
                if (
                    is_compiling()
                    or t.device.type != "cpu"
                    or not probes.active
                    or threading.get_ident() != probes._main
                ):
                    return original(t, *args, **kwargs)
                at = len(rec.events)  # the enter goes here, before anything the copy records
                t0 = rec.clock()
                probes._in_transfer = True
                try:
                    out = original(t, *args, **kwargs)
                finally:
                    probes._in_transfer = False
                if isinstance(out, torch.Tensor) and out.device.type != "cpu":
                    rec.events.insert(at, (t0, r.XFER_ENTER, None, None))
                    rec.mark(r.XFER_EXIT)
                    size = t.numel() * t.element_size()
                    tally = probes.transfers
                    tally[0] += 1
                    tally[1] += size
                    if t.is_pinned():
                        tally[2] += size
                    if non_blocking(args, kwargs):
                        tally[3] += size
                return out

            return move

        self.patches.replace(torch.Tensor, "to", wrap(torch.Tensor.to))
        self.patches.replace(torch.Tensor, "cuda", wrap(torch.Tensor.cuda))

    def _install_sync_watch(self, device: DeviceClock) -> None:
        """Synchronising calls, each as a SYNC event at the moment it returned
        (a copy's wait is the transfer's, flagged). ``Tensor.item`` also reads
        the clock as it starts, so the wait inside it is exact."""
        probes = self
        rec = self.rec

        def on_sync(filename: str, lineno: int) -> None:
            if probes.active:
                rec.mark(r.SYNC, None, (filename, lineno, probes._in_transfer))

        self.patches.enter(device.watch_syncs(on_sync))
        original_item = torch.Tensor.item
        on_device = device.tensor_on_device

        def item(t: Any) -> Any:
            if is_compiling():
                return original_item(t)
            if probes.active and on_device(t) and threading.get_ident() == probes._main:
                rec.clock()
            return original_item(t)

        self.patches.replace(torch.Tensor, "item", item)

        # an explicit torch.cuda.synchronize() is a sync too; torch's debug mode
        # leaves it out (it is deliberate), the loop still waits in it
        original_sync = torch.cuda.synchronize

        def synchronize(*args: Any, **kwargs: Any) -> Any:
            if is_compiling() or not probes.active or threading.get_ident() != probes._main:
                return original_sync(*args, **kwargs)
            before = len(rec.events)
            rec.clock()  # the wait inside is exact, as for .item()
            out = original_sync(*args, **kwargs)
            if not any(e[1] == r.SYNC for e in rec.events[before:]):  # not reported already
                on_sync(*caller_outside(sys._getframe(1)))
            return out

        self.patches.replace(torch.cuda, "synchronize", synchronize)

    # -- stopping -----------------------------------------------------------
    def _check_limits(self, steps: int, now: float, default_seconds: float | None) -> None:
        if self.max_steps is not None and steps >= self.max_steps:
            self._stop("steps")
        limit = self.max_seconds if self.max_seconds is not None else default_seconds
        if limit is not None and steps > 0 and now - self.rec.start >= limit:
            self._stop("seconds")

    def _stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = StopCell(reason)
            self.stop_time = self.rec.clock()
        raise StopCell(self.stopped.reason)

    # -- results ----------------------------------------------------------------
    def trained_param_ids(self) -> set[int]:
        ids: set[int] = set()
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                ids.update(id(p) for p in group["params"])
        return ids

    def iter_passes(self) -> Iterator[Pass]:

        return iter(passes(self.rec.events))


def _steps_done(p: Pass) -> int:
    """Training steps finished in pass ``p`` when the loop asks for another batch.

    A loop that reads one batch ahead (accelerate's DataLoaderShard, Lightning's
    fetcher for unsized loaders) asks for batch i+1 before it trains on batch i:
    it has trained one batch fewer than it has read.
    """
    if p.units == 0:
        return p.yielded
    return max(p.yielded - 1, min(p.yielded, p.units))
