"""The coordinator: one :class:`Probes` per run of a cell owns the shared
state (:mod:`epochmagic.capture.probes.state`), installs each target's probes
in ``__enter__`` and removes them all in ``__exit__``, whatever happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from epochmagic.capture.compilewatch import CompileWatch
from epochmagic.capture.cudaclock import DeviceClock
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes.backward import BackwardProbe
from epochmagic.capture.probes.forward import ForwardProbe
from epochmagic.capture.probes.loader import LoaderProbe
from epochmagic.capture.probes.optimizer import OptimizerProbe
from epochmagic.capture.probes.state import ProbeState, StopCell
from epochmagic.capture.probes.sync import install_sync_watch
from epochmagic.capture.probes.transfer import TransferProbe
from epochmagic.capture.recorder import Pass, Recorder, passes


def accelerator_available() -> bool:
    """Any accelerator torch can copy batches to (``torch.accelerator`` is
    torch 2.6+; before it, CUDA and MPS are asked directly)."""
    acc = getattr(torch, "accelerator", None)
    if acc is not None:
        return bool(acc.is_available())
    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available()))


class Probes:
    """Installs the probes for one run of a cell; a context manager. What
    they found is read from it afterwards (the properties below)."""

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
        """``substitute``, ``autocast``, ``on_step``: a what-if's rebuilt
        training loader, autocast context around root forwards and progress
        callback at step boundaries; ``on_measure`` starts the clocks when
        measuring begins (after ``skip_epochs`` unmeasured epochs)."""
        self.rec = rec
        self.user_ns = user_ns if user_ns is not None else {}
        if watch_transfers is None:
            watch_transfers = device is not None or accelerator_available()
        self.watch_transfers = watch_transfers
        self.on_measure = on_measure
        self.notes: list[str] = []
        self.patches = Patches()
        self.state = ProbeState(
            rec,
            device,
            max_steps=max_steps,
            max_seconds=max_seconds,
            loader_name=loader_name,
            on_step=on_step,
            idle=skip_epochs > 0,
            begin_measuring=self._begin_measuring,
        )
        self.loader = LoaderProbe(
            self.state, user_ns=self.user_ns, substitute=substitute, skip_epochs=skip_epochs
        )
        self.forward = ForwardProbe(
            self.state, self.patches, autocast=autocast, time_modules=time_modules
        )
        self.backward = BackwardProbe(self.state, self.loader, self.forward)
        self.optimizer = OptimizerProbe(self.state, self.forward)
        self.transfer = TransferProbe(self.state)
        self.compile_watch = CompileWatch(
            self.patches, rec.clock, self.state.mark_compiled, self._on_dynamo
        )

    # -- install / remove -------------------------------------------------
    def __enter__(self) -> Probes:
        self.state.active = not self.state.idle
        try:
            self._install()
        except BaseException:
            self.state.active = False
            self.patches.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        st = self.state
        st.active = False
        st.idle = False
        try:
            self.patches.close()
        finally:
            st.close()
            self.loader.close()

    def _install(self) -> None:
        patches = self.patches
        self.loader.install(patches)
        self.backward.install(patches)
        self.optimizer.install(patches)
        if self.watch_transfers:
            self.transfer.install(patches)
        if self.state.device is not None:
            install_sync_watch(patches, self.state, self.transfer, self.state.device)
        for value in list(self.user_ns.values()):
            if isinstance(value, torch.nn.Module):
                self.forward.adopt_root_class(type(value))
        self.compile_watch.recording = not self.state.idle
        self.compile_watch.install()
        if not self.state.idle:
            self.forward.install_global_hooks()

    def _begin_measuring(self) -> None:
        """The epochs to skip are over (or the loop has no training loader to
        skip epochs of): measuring starts now."""
        st = self.state
        st.idle = False
        st.measured = True
        self.loader.idle_passes.clear()
        if self.on_measure is not None:
            self.on_measure()
        self.compile_watch.recording = True
        self.compile_watch.reset_baseline()
        st.active = True
        self.forward.install_global_hooks()

    def _on_dynamo(self, config: Any) -> None:
        note = self.forward.on_dynamo(config)
        if note is not None:
            self.notes.append(note)

    # -- results ----------------------------------------------------------------
    def trained_param_ids(self) -> set[int]:
        return self.optimizer.trained_param_ids()

    def iter_passes(self) -> Iterator[Pass]:
        return iter(passes(self.rec.events))

    @property
    def passes(self) -> dict[int, Pass]:
        """Iterator id -> its loader pass (emptied when the run ends)."""
        return self.loader.passes

    @property
    def loader_name(self) -> str | None:
        return self.state.loader_name

    @property
    def named_loader_seen(self) -> bool:
        return self.loader.named_loader_seen

    @property
    def max_steps(self) -> int | None:
        return self.state.max_steps

    @property
    def max_seconds(self) -> float | None:
        return self.state.max_seconds

    @property
    def stopped(self) -> StopCell | None:
        return self.state.stopped

    @property
    def stop_time(self) -> float | None:
        return self.state.stop_time

    @property
    def skip_epochs(self) -> int:
        return self.loader.skip_epochs

    @property
    def skipped_epochs(self) -> int:
        return self.loader.skipped_epochs

    @property
    def idle_epochs(self) -> int:
        return self.loader.idle_epochs

    @property
    def measured(self) -> bool:
        return self.state.measured

    @property
    def no_loader_to_skip(self) -> bool:
        return self.state.no_loader_to_skip

    @property
    def roots(self) -> dict[int, torch.nn.Module]:
        return self.forward.roots

    @property
    def precision(self) -> str | None:
        return self.forward.precision

    @property
    def first_call(self) -> tuple[Any, Any, Any, Any] | None:
        return self.forward.first_call

    @property
    def module_spans(self) -> list[tuple[float, float, int]]:
        return self.forward.module_spans

    @property
    def module_objects(self) -> dict[int, Any]:
        return self.forward.module_objects

    @property
    def grad_marks(self) -> list[tuple[float, int]]:
        return self.forward.grad_marks

    @property
    def optimizers(self) -> dict[int, torch.optim.Optimizer]:
        return self.optimizer.optimizers

    @property
    def clock_opt(self) -> Any:
        return self.state.clock_opt

    @property
    def scalers(self) -> dict[int, bool]:
        return self.optimizer.scalers

    @property
    def scaler_skips(self) -> int:
        return self.optimizer.scaler_skips

    @property
    def transfers(self) -> list[int]:
        return self.transfer.transfers
