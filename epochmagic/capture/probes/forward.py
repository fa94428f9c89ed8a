"""Forward probes: root modules, timed by patching ``__call__`` on the
*class* of each root, and ``--modules``' global hooks.

Roots are found in the namespace, or by global module hooks removed after the
first training step. torch's global module hooks fire for every submodule and
push every call onto ``Module._call_impl``'s slow path (+6-16 % measured on a
101-module MLP); per-instance hooks would be copied by ``copy.deepcopy`` (an
EMA model) and outlive the run. Classes are shared by such copies and the
patch is one ``delattr`` away from gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.compiler import is_compiling

from epochmagic.capture import recorder as r
from epochmagic.capture.batches import autocast_precision, first_tensor_arg, signature
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes.state import ProbeState

# torch warns that a torch.compile'd module called while global hooks exist
# fires them twice; ours handle that, so the warning is noise.
_TWICE_WARNING = r"Using `torch.compile\(module\)` when there"


class ForwardProbe:
    """Root modules' forwards, and what they tell: the model, its precision,
    the first training call's inputs; with ``--modules`` every module's."""

    def __init__(
        self,
        state: ProbeState,
        patches: Patches,
        *,
        autocast: Callable[[], Any] | None,
        time_modules: bool,
    ) -> None:
        self.state = state
        self.rec = state.rec
        self.patches = patches
        self.autocast = autocast  # a what-if's autocast context around root forwards
        self.time_modules = time_modules
        self.roots: dict[int, torch.nn.Module] = {}
        self.precision: str | None = None
        # the first training forward: its module and its inputs' shapes, so the
        # model's FLOPs can be counted later on inputs of the same shape
        self.first_call: tuple[Any, Any, Any, Any] | None = None
        self.module_spans: list[tuple[float, float, int]] = []  # (enter, exit, module id)
        self.module_objects: dict[int, Any] = {}
        self.grad_marks: list[tuple[float, int]] = []  # (time, module id) as gradients arrive
        self._patched_classes: dict[type, Any] = {}
        self._discovery: list[Any] = []  # the discovery hooks' handles
        self.discovering: Any = None  # the root module discovery is timing
        self.discovery_ctx: Any = None  # the autocast entered around it

    def install_global_hooks(self) -> None:
        """Global module hooks: root discovery until the first training step,
        and ``--modules``. Not while epochs are skipped: they slow every
        module call."""
        self._start_discovery()
        if self.time_modules:
            self._install_module_timing()

    def on_dynamo(self, config: Any) -> str | None:
        """Dynamo is loaded: with its hook guards on (not the default), hidden
        global hooks would make it recompile at every call, so none stay.
        Returns a note for the user when that switched ``--modules`` off."""
        if getattr(config, "skip_nnmodule_hook_guards", True):
            return None
        self.end_discovery()
        if not self.time_modules:
            return None
        self.time_modules = False
        return (
            "--modules was switched off: torch._dynamo.config.skip_nnmodule_hook_guards "
            "is False, so global module hooks would make compiled code recompile"
        )

    # -- roots ---------------------------------------------------------------------
    def adopt_root_class(self, cls: type) -> None:
        if cls in self._patched_classes:
            return
        original = cls.__call__
        fw = self
        st = self.state
        rec = self.rec

        def __call__(module: Any, *args: Any, **kwargs: Any) -> Any:
            if is_compiling() or st.depth or not st.active or threading.get_ident() != st.main:
                return original(module, *args, **kwargs)
            st.depth = 1
            fw.enter_forward(module, args, kwargs)
            try:
                if fw.autocast is None:
                    return original(module, *args, **kwargs)
                with fw.autocast():
                    return original(module, *args, **kwargs)
            finally:
                st.depth = 0
                rec.mark(r.FWD_EXIT, module)

        try:
            self.patches.replace(cls, "__call__", __call__, hide=True)
        except (TypeError, AttributeError):  # extension types refuse class attributes
            return
        self._patched_classes[cls] = original

    def enter_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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

    # -- discovery -----------------------------------------------------------------
    def _start_discovery(self) -> None:
        """Find root modules the namespace did not show (built by the cell or a
        library) with global hooks, removed after the first training step."""
        self.patches.warning_filter("ignore", _TWICE_WARNING)
        fw = self
        st = self.state
        rec = self.rec
        mm = torch.nn.modules.module

        def pre(module: Any, args: Any) -> None:
            if is_compiling() or st.depth or not st.active or threading.get_ident() != st.main:
                return
            st.depth = 1
            fw.discovering = module
            fw.enter_forward(module, tuple(args), {})
            fw.adopt_root_class(type(module))
            if fw.autocast is not None:
                fw.discovery_ctx = fw.autocast()
                fw.discovery_ctx.__enter__()

        def post(module: Any, args: Any, output: Any) -> None:
            if is_compiling():
                return
            if fw.discovering is module and st.depth == 1:
                fw.discovering = None
                st.depth = 0
                if fw.discovery_ctx is not None:
                    ctx, fw.discovery_ctx = fw.discovery_ctx, None
                    ctx.__exit__(None, None, None)
                rec.mark(r.FWD_EXIT, module)

        self.discovering = None
        self.discovery_ctx = None
        self._discovery = [
            self.patches.hook(mm.register_module_forward_pre_hook(pre), module_hook=True),
            self.patches.hook(
                mm.register_module_forward_hook(post, always_call=True), module_hook=True
            ),
        ]

    def end_discovery(self) -> None:
        """Every model of the step has been called by now."""
        for h in self._discovery:
            self.patches.forget_module_hook(h)
        self._discovery = []

    # -- --modules -----------------------------------------------------------------
    def _install_module_timing(self) -> None:
        """``--modules``: every submodule's forward, inclusive, by module. It
        costs what torch's global hooks cost (+6-16 % measured), hence opt-in."""
        mm = torch.nn.modules.module
        fw = self
        st = self.state
        clock = self.rec.clock
        stack: list[float] = []

        def pre(module: Any, args: Any) -> None:
            if is_compiling():
                return
            if threading.get_ident() == st.main:
                stack.append(clock())

        def post(module: Any, args: Any, output: Any) -> None:
            if is_compiling() or threading.get_ident() != st.main or not stack:
                return
            # raw clock times, not durations: on CUDA they move to device time
            fw.module_spans.append((stack.pop(), clock(), id(module)))
            fw.module_objects.setdefault(id(module), module)
            # backward: the moment the gradient reaches a leaf layer's output is
            # where its backward starts (a tensor hook: unlike module backward
            # hooks it does not wrap the output, so in-place ops stay legal)
            if (
                isinstance(output, torch.Tensor)
                and output.requires_grad
                and st.active
                and not next(module.children(), None)
            ):
                key = id(module)

                def mark(grad: Any, k: int = key) -> None:
                    if st.active:
                        fw.grad_marks.append((clock(), k))

                output.register_hook(mark)

        self.patches.hook(mm.register_module_forward_pre_hook(pre), module_hook=True)
        self.patches.hook(mm.register_module_forward_hook(post, always_call=True), module_hook=True)
