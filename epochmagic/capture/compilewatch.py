"""``torch.compile`` during a run: when dynamo compiles, what it recompiled
and why, where compiled code runs, all from torch's own means.

* Compile time: dynamo's compile start/end callbacks
  (``torch._dynamo.callback.callback_handler``), which fire around every
  frame it compiles and every lazily compiled backward.
* Recompiles and their reasons: ``torch._dynamo.utils.get_compilation_metrics()``
  (``compile_id`` ``"frame/n"`` with ``n > 0`` is a recompile; its
  ``recompile_reason`` is the guard that failed).
* Graph breaks: ``torch._dynamo.utils.counters["graph_break"]`` (reason -> count).
* Compiled regions: every call into compiled code goes through dynamo's
  ``compile_wrapper``, which calls ``torch._dynamo.eval_frame._maybe_set_eval_frame``
  once to install dynamo's frame callback and once to restore the prior one;
  the span in between is marked ``forward`` (the probes cannot see inside
  compiled code, and what they can see there, such as a ``backward()`` after
  a graph break, nests inside).

Importing dynamo costs about a second, so nothing here imports it: the watch
starts when the cell first calls ``torch.compile`` (patched for the run) or at
once when dynamo is already loaded. While dynamo compiles, what it would
guard on is hidden (:mod:`epochmagic.capture.patching`).
"""

from __future__ import annotations

import re
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from epochmagic.capture.patching import Patches, register_with_dynamo

_COMPILE_ID = re.compile(r"(\d+)/(\d+)")


class CompileWatch:
    """Watches one run; ``result()`` gives ``prof.compile``'s fields."""

    def __init__(
        self,
        patches: Patches,
        clock: Callable[[], float],
        on_region: Callable[[bool], None],
        on_setup: Callable[[Any], None] | None = None,
    ) -> None:
        self.patches = patches
        self.clock = clock
        self.on_region = on_region  # True when compiled code starts running, False when it stops
        self.on_setup = on_setup  # called with dynamo's config once dynamo is watched
        self.intervals: list[tuple[float, float]] = []  # compile (start, end) on the run's clock
        self.compile_ids: list[str] = []
        self.regions = 0
        self.started = False
        self.live = True  # False once the run is over
        self.recording = True  # False while --skip-epochs lets epochs run unmeasured
        self._open: float | None = None
        self._main = threading.get_ident()
        self._before: dict[str, Counter[str]] = {}
        self._metrics_before: list[Any] = []
        self._handler: Any = None

    # -- install -----------------------------------------------------------------------
    def install(self) -> None:
        if "torch._dynamo" in sys.modules:
            self._setup()
            return
        import torch

        original = torch.compile
        watch = self

        def compile(*args: Any, **kwargs: Any) -> Any:  # noqa: A001 (torch.compile, patched)
            if watch.live:
                watch._setup()
            return original(*args, **kwargs)

        compile.__wrapped__ = original  # type: ignore[attr-defined]  # a function attribute mypy does not know
        compile.__doc__ = original.__doc__
        self.patches.replace(torch, "compile", compile)
        self.patches.on_close(self._over)

    def _over(self) -> None:
        self.live = False

    def _setup(self) -> None:
        if self.started:
            return
        self.started = True
        try:
            import torch._dynamo
            from torch._dynamo import eval_frame
            from torch._dynamo.callback import callback_handler
        except ImportError:  # a torch without dynamo's callbacks: nothing to watch
            return
        register_with_dynamo()
        self.reset_baseline()
        self._handler = callback_handler
        callback_handler.register_start_callback(self._start)
        callback_handler.register_end_callback(self._end)
        self.patches.on_close(self._remove_callbacks)
        setter = getattr(eval_frame, "_maybe_set_eval_frame", None)
        if setter is not None:
            self._watch_regions(eval_frame, setter)
        if self.on_setup is not None:
            self.on_setup(torch._dynamo.config)

    def _remove_callbacks(self) -> None:
        handler, self._handler = self._handler, None
        for lst, fn in ((handler.start_callbacks, self._start), (handler.end_callbacks, self._end)):
            if fn in lst:
                lst.remove(fn)

    def _watch_regions(self, eval_frame: Any, setter: Callable[[Any], Any]) -> None:
        """Compiled code runs between the two calls dynamo's ``compile_wrapper``
        makes (install its callback, restore the prior one); the compiled
        graph itself runs inside a ``disable`` context, which also calls the
        setter, so the region is told by its caller's frame, not by the value."""
        watch = self
        open_frames: set[int] = set()

        def _maybe_set_eval_frame(callback: Any) -> Any:
            if threading.get_ident() != watch._main:
                return setter(callback)
            caller = sys._getframe(1)
            if caller.f_code.co_name != "compile_wrapper":
                return setter(callback)
            key = id(caller)
            if key not in open_frames:
                open_frames.add(key)
                if len(open_frames) == 1 and watch.recording:
                    watch.regions += 1
                    watch.on_region(True)
                return setter(callback)
            prior = setter(callback)
            open_frames.discard(key)
            if not open_frames and watch.recording:
                watch.on_region(False)
            return prior

        self.patches.replace(eval_frame, "_maybe_set_eval_frame", _maybe_set_eval_frame)

    # -- dynamo's callbacks ------------------------------------------------------------------
    def _start(self, *args: Any) -> None:
        self.patches.hide()
        self._open = self.clock()

    def _end(self, *args: Any) -> None:
        end = self.clock()
        start, self._open = self._open, None
        self.patches.show()
        if start is not None and self.recording:
            self.intervals.append((start, end))
            compile_id = getattr(args[0], "compile_id", None) if args else None
            self.compile_ids.append(str(compile_id) if compile_id is not None else "")

    # -- results ------------------------------------------------------------------------
    def reset_baseline(self) -> None:
        """Counters from now on (the measured epoch's start)."""
        self.intervals.clear()
        self.compile_ids.clear()
        self.regions = 0
        if "torch._dynamo.utils" not in sys.modules:
            return
        from torch._dynamo import utils

        self._before = {k: Counter(v) for k, v in utils.counters.items()}
        self._metrics_before = list(_metrics())

    def result(self) -> dict[str, Any] | None:
        """``prof.compile``'s fields as deltas over the run, or None when
        nothing compiled and no compiled code ran."""
        if not self.started or "torch._dynamo.utils" not in sys.modules:
            return None
        from torch._dynamo import utils

        if not self.intervals and not self.regions:
            return None
        breaks = utils.counters.get("graph_break", Counter()) - self._before.get(
            "graph_break", Counter()
        )
        known = {id(m) for m in self._metrics_before}
        new = [m for m in _metrics() if id(m) not in known]
        reasons = []
        recompiles = 0
        for m in new:
            if _frame_compile(getattr(m, "compile_id", None)) > 0 and _is_frame(m):
                recompiles += 1
                reason = getattr(m, "recompile_reason", None)
                if reason:
                    reasons.append(str(reason).strip())
        if not new:  # an older torch without metrics: count from the callbacks' ids
            recompiles = sum(1 for c in self.compile_ids if _frame_compile(c) > 0)
        return {
            "compile_s": sum(b - a for a, b in self.intervals),
            "compiles": len(self.intervals),
            "recompiles": recompiles,
            "graph_breaks": sum(breaks.values()),
            "recompile_reasons": reasons,
            "graph_break_reasons": dict(breaks.most_common()),
            "compiled_calls": self.regions,
        }


def _metrics() -> list[Any]:
    from torch._dynamo import utils

    get = getattr(utils, "get_compilation_metrics", None)
    try:
        return list(get()) if get is not None else []
    except Exception:  # noqa: BLE001 (a record we cannot read is no record)
        return []


def _frame_compile(compile_id: Any) -> int:
    """The n of a compile id ``"frame/n"`` (0: the frame's first compile)."""
    m = _COMPILE_ID.search(str(compile_id or ""))
    return int(m.group(2)) if m else 0


def _is_frame(metric: Any) -> bool:
    """A dynamo frame compile (not the lazily compiled backward of one)."""
    return bool(getattr(metric, "co_name", None))
