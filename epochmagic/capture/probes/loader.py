"""DataLoader probes: ``DataLoader.__iter__`` is where a pass (and its worker
start-up) begins, ``_BaseDataLoaderIter.__next__`` the one place every
DataLoader iterator hands out a batch.

``--skip-epochs N``: while idle they record nothing and only count the
training loader's passes, until pass N+1 starts; measuring begins there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torch.compiler import is_compiling
from torch.utils.data import DataLoader
from torch.utils.data import dataloader as dl_mod

from epochmagic.capture import recorder as r
from epochmagic.capture.batches import batch_info
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes.state import ProbeState
from epochmagic.capture.recorder import Pass

Keys = frozenset[tuple[str, int]]


def loader_keys(loader: Any) -> Keys:
    """Identity of a training loader: itself, or any loader over its dataset.

    Libraries such as skorch build a fresh DataLoader every epoch.
    """
    keys = {("loader", id(loader))}
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        keys.add(("dataset", id(dataset)))
    return frozenset(keys)


def steps_done(p: Pass) -> int:
    """Training steps finished in pass ``p`` when the loop asks for another batch.

    A loop that reads one batch ahead (accelerate's DataLoaderShard, Lightning's
    fetcher for unsized loaders) asks for batch i+1 before it trains on batch i:
    it has trained one batch fewer than it has read.
    """
    if p.units == 0:
        return p.yielded
    return max(p.yielded - 1, min(p.yielded, p.units))


class LoaderProbe:
    """The passes of one run, and the loader's part of ``--skip-epochs``."""

    def __init__(
        self,
        state: ProbeState,
        *,
        user_ns: dict[str, Any],
        substitute: Callable[[Any], Any] | None,
        skip_epochs: int,
    ) -> None:
        self.state = state
        self.rec = state.rec
        self.user_ns = user_ns
        self.substitute = substitute  # a what-if's rebuilt loader for the training loader
        self.named_loader_seen = False
        self.passes: dict[int, Pass] = {}  # iterator id -> its pass
        # --skip-epochs: passes of the training loader still to run unmeasured
        self.skip_epochs = skip_epochs
        self.skipped_epochs = 0
        self.idle_passes: dict[int, Keys] = {}
        self.idle_current: Keys | None = None
        self._idle_trained: set[tuple[str, int]] = set()

    def install(self, patches: Patches) -> None:
        patches.replace(DataLoader, "__iter__", self._wrap_iter(DataLoader.__iter__))
        base = dl_mod._BaseDataLoaderIter
        patches.replace(base, "__next__", self._wrap_next(base.__next__))

    def _wrap_iter(self, orig_iter: Callable[[Any], Any]) -> Callable[[Any], Any]:
        ld = self
        st = self.state
        rec = self.rec

        def __iter__(loader: Any) -> Any:
            if is_compiling() or threading.get_ident() != st.main:
                return orig_iter(loader)
            if not st.active:
                if not st.idle or not ld.idle_iter(loader):
                    it = orig_iter(loader)
                    if st.idle:
                        ld.idle_passes[id(it)] = ld.keys_for(loader)
                    return it
            keys = ld.keys_for(loader)
            st.depth = 0
            if st.stopped is not None or keys & st.trained_keys:
                st.stop("epoch")
            if ld.substitute is not None:  # a what-if's rebuilt training loader
                loader = ld.substitute(loader) or loader
            p = Pass(loader, keys, rec.clock())
            rec.events.append((p.start, r.ITER_ENTER, p, None))
            try:
                it = orig_iter(loader)
            finally:
                rec.mark(r.ITER_EXIT, p)
            ld.passes[id(it)] = p
            p.iterator = it
            return it

        return __iter__

    def _wrap_next(self, orig_next: Callable[[Any], Any]) -> Callable[[Any], Any]:
        ld = self
        st = self.state
        rec = self.rec

        def __next__(it: Any) -> Any:
            if is_compiling() or threading.get_ident() != st.main:
                return orig_next(it)
            if not st.active:
                if st.idle:
                    ld.idle_current = ld.idle_passes.get(id(it))
                return orig_next(it)
            p = ld.passes.get(id(it))
            if p is None or p.iterator is not it:
                p = ld.unseen_pass(it)
            st.depth = 0
            t = rec.mark(r.NEXT_ENTER, p)
            st.sample_memory(t)
            if st.stopped is not None:
                st.stop(st.stopped.reason)
            if p.trained:
                done = steps_done(p)
                if st.on_step is not None:
                    st.on_step(done)
                st.check_limits(done, t, None)
            try:
                batch = orig_next(it)
            except StopIteration:
                ld.pass_ended(p)
                raise
            except BaseException:
                rec.mark(r.NEXT_EXIT, p, None)
                raise
            p.yielded += 1
            st.current = p
            if ("named", 0) in p.keys:
                st.named_pass = p
            rec.mark(r.NEXT_EXIT, p, batch_info(batch))
            return batch

        return __next__

    def unseen_pass(self, it: Any) -> Pass:
        """An iterator made without DataLoader.__iter__ (a subclass that
        overrides it): its pass starts with its first batch."""
        keys = frozenset({("dataset", id(getattr(it, "_dataset", None)))})
        if keys & self.state.trained_keys:
            self.state.stop("epoch")
        p = Pass(None, keys, self.rec.clock())
        p.iterator = it
        self.passes[id(it)] = p
        return p

    def pass_ended(self, p: Pass) -> None:
        """``p``'s iterator raised StopIteration."""
        p.exhausted = True
        st = self.state
        if st.current is p:
            st.current = None
        if st.named_pass is p:
            st.named_pass = None
        self.rec.mark(r.NEXT_STOP, p)

    def keys_for(self, loader: Any) -> Keys:
        keys = loader_keys(loader)
        name = self.state.loader_name
        if name is not None:
            named = self.user_ns.get(name)
            if named is not None and keys & loader_keys(named):
                self.named_loader_seen = True
                keys = keys | frozenset({("named", 0)})
        return keys

    def close(self) -> None:
        self.passes.clear()
        self.idle_passes.clear()

    # -- --skip-epochs --------------------------------------------------------
    def idle_iter(self, loader: Any) -> bool:
        """A pass starts while epochs are skipped; True when it is the one to
        measure (the training loader's pass N+1)."""
        keys = self.keys_for(loader)
        if not keys & self._idle_trained:
            return False
        self.skipped_epochs += 1
        if self.skipped_epochs < self.skip_epochs:
            return False
        self.state.begin_measuring()
        return True

    def idle_trained_step(self) -> None:
        """A backward finished while idle: its loader pass is the training
        loader's. Without one there are no epochs to skip: measuring starts at
        the next step boundary (the optimizer's step, else the next backward)."""
        if self.idle_current is not None:
            self._idle_trained |= self.idle_current
        elif not self._idle_trained:
            self.state.no_loader_to_skip = True

    @property
    def idle_epochs(self) -> int:
        """Epochs of the training loader that ran unmeasured (--skip-epochs)."""
        trained_unmeasured = self._idle_trained and not self.state.measured
        return self.skipped_epochs + (1 if trained_unmeasured else 0)
