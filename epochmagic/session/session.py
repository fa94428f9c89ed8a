"""The session: the user's cell compiled once and every run of it.

The cell is compiled under a file name registered in IPython's compile cache,
so a traceback from the cell shows the user's own line (``Cell In[5], line
4``), not ``<timed exec>``. ``Session.run`` is the one way the cell runs: the
magic's measured run (``measure``: the user's training, its effects stay), the
short traced run of line attribution (``trace``) and a what-if (``whatif``),
the last two with everything snapshotted before and restored after.
"""

from __future__ import annotations

import ast
import difflib
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from IPython.core.error import UsageError

from epochmagic.analysis.run import RunResult
from epochmagic.capture import loaders as loadersmod
from epochmagic.capture.patching import Patches
from epochmagic.capture.sampler import Sampler
from epochmagic.diagnosis import predict
from epochmagic.model.cell import Cell
from epochmagic.model.profile import EpochProfile
from epochmagic.session.compilecopies import CompiledCopies
from epochmagic.session.execute import Hooks, Limits, execute
from epochmagic.session.snapshot import Snapshot, rebound_names

Mode = Literal["measure", "trace", "whatif"]


def compile_cell(shell: Any, source: str, magic_line: str | None = None) -> Cell:
    """Compile ``source`` for ``exec`` in the user namespace.

    ``magic_line`` is the ``%%epochprofile ...`` line above a cell body: it is
    kept in the cached source so line numbers match what the user sees.
    IPython's transforms drop leading blank lines and turn ``%magic`` lines
    (with their continuations) into calls, so every line number of the
    transformed code is mapped back to the line it came from.
    """
    transformed = shell.transform_cell(source) if magic_line is not None else source
    tree = shell.compile.ast_parse(transformed)
    if _has_top_level_await(tree):
        raise UsageError(
            "%%epochprofile cannot profile a cell with top-level `await`: put the loop in a "
            "function and call it with asyncio.run(...) or without await"
        )
    tree = shell.transform_ast(tree)
    shown = (
        source if magic_line is None else f"%%epochprofile {magic_line}".rstrip() + "\n" + source
    )
    if magic_line is not None:
        _renumber(tree, source_lines(source, transformed), offset=1)
    number = cell_number(shell)
    filename = shell.compile.cache(shown, number=number, raw_code=shown)
    code = shell.compile(tree, filename, "exec")
    label = f"Cell In[{number}]"
    return Cell(source=source, code=code, filename=filename, tree=tree, label=label)


def cell_number(shell: Any) -> int:
    """The prompt number of the cell that called the magic: the number IPython
    compiled that cell under. ``execution_count`` is not it: IPython 9
    increments it before the cell runs, IPython 8 after."""
    fmap = getattr(shell.compile, "_filename_map", {})
    frame: Any = sys._getframe(1)
    while frame is not None:
        number = fmap.get(frame.f_code.co_filename)
        if number is not None:
            return int(number)
        frame = frame.f_back
    return int(getattr(shell, "execution_count", 0))


def source_lines(raw: str, transformed: str) -> list[int]:
    """For each line of ``transformed`` (1-based, index 0 unused), the line of
    ``raw`` it came from: lines are matched by their stripped text, and a
    rewritten block (a ``%magic`` line and its continuations made one call)
    maps to the block's first raw line."""
    a = [line.strip() for line in raw.splitlines()]
    b = [line.strip() for line in transformed.splitlines()]
    out: list[int | None] = [None] * len(b)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for k in range(j2 - j1):
            if tag == "equal":
                out[j1 + k] = i1 + k
            elif tag == "replace":
                out[j1 + k] = min(i1 + k, i2 - 1) if j2 - j1 == i2 - i1 else i1
    mapped, last = [0], 0
    for value in out:
        last = value if value is not None else last
        mapped.append(last + 1)
    return mapped


def _renumber(tree: ast.AST, lines: list[int], offset: int) -> None:
    """Give every node the raw line it came from, ``offset`` lines down."""

    def at(n: int) -> int:
        return (lines[n] if 0 < n < len(lines) else n) + offset

    for node in ast.walk(tree):
        n: Any = node
        if getattr(n, "lineno", None) is not None:
            n.lineno = at(n.lineno)
        if getattr(n, "end_lineno", None) is not None:
            n.end_lineno = max(n.lineno, at(n.end_lineno))


def _has_top_level_await(tree: ast.AST) -> bool:
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)

    def walk(node: ast.AST) -> bool:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, scopes):
                continue
            if isinstance(child, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
                return True
            if walk(child):
                return True
        return False

    return walk(tree)


class WhatIfs(Protocol):
    """The what-if layer's entry points (``epochmagic/whatif/whatif.py``): the
    magic hands them to the Session, as this layer cannot import that one."""

    def rerun(
        self,
        session: Session,
        base: EpochProfile,
        steps: int | None,
        progress: Any,
        changes: dict[str, Any],
    ) -> EpochProfile: ...

    def sweep(
        self, session: Session, base: EpochProfile, steps: int | None, grid: dict[str, Any]
    ) -> list[EpochProfile]: ...


@dataclass(eq=False)
class Variant:
    """How a run differs from the cell as written (the magic's own setting,
    a what-if's): names bound to ``original`` see ``rebuilt[0]`` during the
    run, the probes hand out ``substitute``'s loader for a training loader and
    wrap root forwards in ``autocast``; ``install`` adds a what-if's own
    patches (fused optimizers, the thread count). ``compiled``: the cell ran
    compiled code, so a what-if runs on copies of it; a what-if run sets
    ``switched`` to the number of functions it switched to those copies."""

    original: Any = None
    rebuilt: list[Any] = field(default_factory=list)
    substitute: Callable[[Any], Any] | None = None
    autocast: Callable[[], Any] | None = None
    install: Callable[[Patches], None] | None = None
    compiled: bool = False
    switched: int = 0


@dataclass(eq=False)
class Session:
    """A profile's live link to its notebook: the shell, the compiled cell and
    what the measured run found (the user's training loader, models,
    optimizers, loaders). Every run of the cell goes through :meth:`run`.
    ``rerun`` / ``sweep`` make it the ``SessionHandle`` a live profile holds;
    it keeps no profiles: ``history`` holds what each what-if measured, for
    the predictions of later ones (``loading``: per-batch loading costs)."""

    shell: Any
    cell: Cell
    loader_name: str | None = None  # --loader: the training loader's name
    whatifs: WhatIfs | None = None
    train_loader: Any = None  # the user's training DataLoader, never modified
    modules: list[Any] = field(default_factory=list)
    optimizers: list[Any] = field(default_factory=list)
    loaders: list[Any] = field(default_factory=list)
    history: list[predict.Measured] = field(default_factory=list)
    loading: dict[str, float] | None = None
    copies: CompiledCopies = field(default_factory=CompiledCopies)  # compiled code for what-ifs

    def __repr__(self) -> str:
        return f"<Session of {self.cell.label}>"

    @property
    def user_ns(self) -> dict[str, Any]:
        ns: dict[str, Any] = self.shell.user_ns
        return ns

    # -- the SessionHandle a live profile holds (epochmagic/model/profile.py) --
    def rerun(
        self, base: EpochProfile, steps: int | None, *, _progress: Any = None, **changes: Any
    ) -> EpochProfile:
        """One what-if; what it measured is kept for later predictions.
        ``_progress``: a tqdm-like bar to drive, False for none."""
        result = self._whatifs().rerun(self, base, steps, _progress, changes)
        record = predict.measured(result)
        if record is not None:
            self.history.append(record)
        return result

    def sweep(self, base: EpochProfile, steps: int | None, **grid: Any) -> list[EpochProfile]:
        return self._whatifs().sweep(self, base, steps, grid)

    def _whatifs(self) -> WhatIfs:
        if self.whatifs is None:
            raise RuntimeError("this session runs no what-ifs")
        return self.whatifs

    # -- running the cell ------------------------------------------------------
    def run(
        self,
        mode: Mode,
        limits: Limits | None = None,
        variant: Variant | None = None,
        *,
        on_step: Callable[[int], None] | None = None,
        tracer: Any = None,
        cell: Cell | None = None,
        sample: bool = False,
    ) -> RunResult:
        """Run the cell once under the probes. ``measure``: the user's
        training; what it changes stays and the Session learns the loader,
        models and optimizers from it; ``sample``: its stack is sampled while
        it is measured (``RunResult.samples``, sampled lines). ``trace``
        (under ``tracer``, running ``cell``: the traced copy) and ``whatif``:
        output captured and everything put back afterwards; an interrupt is
        re-raised once it is; never sampled. Every mode puts back what
        ``variant`` changed and frees memory after an out-of-memory; the
        user's error stays in the result."""
        __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
        v = variant if variant is not None else Variant()
        restored = mode != "measure"
        snap = self._snapshot(v) if restored else None
        sampler = Sampler(clock=time.perf_counter) if sample and mode == "measure" else None
        hooks = Hooks(v.substitute, v.autocast, on_step, tracer, capture=restored, sampler=sampler)
        result: RunResult | None = None
        try:
            with Patches() as patches:
                if sampler is not None:  # stopped by execute, or by this whatever happens
                    patches.on_close(sampler.stop)
                self._install(mode, v, patches)
                result = execute(
                    cell or self.cell, self.user_ns, self.loader_name, limits or Limits(), hooks
                )
        finally:
            self._clean_up(mode, v, snap, result)
        assert result is not None  # execute returned: an exception would have left above
        if mode == "measure":
            self._adopt(result, v)
        elif result.status == "interrupted":
            raise result.exc or KeyboardInterrupt()
        return result

    def _snapshot(self, v: Variant) -> Snapshot:
        """Everything a restored run may change: the names the cell binds and
        those of the training loader and the optimizers, the models,
        optimizers, RNGs and loaders' generators."""
        ns = self.user_ns
        held = [o for o in (self.train_loader, v.original, *self.optimizers) if o is not None]
        names = {n for n, value in ns.items() if any(value is o for o in held)}
        return Snapshot.take(
            ns,
            rebound_names(self.cell.tree) | names,
            modules=self.modules,
            optimizers=self.optimizers,
            loaders=[*self.loaders, *v.rebuilt],
        )

    def _install(self, mode: Mode, v: Variant, patches: Patches) -> None:
        """Apply ``v`` for the run; ``patches`` undoes it when the run ends."""
        ns = self.user_ns
        if v.original is not None and v.rebuilt:
            for name in [n for n, value in ns.items() if value is v.original]:
                ns[name] = v.rebuilt[0]
                patches.on_close(_put_back(ns, name, v.rebuilt[0], v.original))
        if v.install is not None:
            v.install(patches)
        v.switched = self.copies.swap(patches, ns) if mode == "whatif" and v.compiled else 0

    def _clean_up(
        self, mode: Mode, v: Variant, snap: Snapshot | None, result: RunResult | None
    ) -> None:
        """The one cleanup: the snapshot restored; for a restored run, the
        worker processes it started stopped (a loader that holds its iterator
        for the next epoch keeps it, and the magic's rebuilt loaders serve its
        traced run too); memory freed after an out-of-memory."""
        if snap is not None:
            snap.restore()
        if mode != "measure":
            # a what-if's rebuilt loaders serve that run only
            discarded, reused = (v.rebuilt, []) if mode == "whatif" else ([], v.rebuilt)
            kept = [*self.user_ns.values(), *reused]
            loadersmod.shut_down(
                [
                    *(result.iterators if result is not None else []),
                    *(getattr(r, "_iterator", None) for r in discarded),
                ],
                keep=[getattr(x, "_iterator", None) for x in kept],
            )
        if result is not None and result.status == "oom":
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _adopt(self, run: RunResult, v: Variant) -> None:
        """What the measured run found: what-ifs and the traced run use it."""
        probes = run.probes
        training = run.timeline.training_pass
        self.train_loader = v.original
        if self.train_loader is None and training is not None:
            self.train_loader = training.loader
        self.modules = list(probes.roots.values())
        self.optimizers = list(probes.optimizers.values())
        self.loaders = [p.loader for p in probes.iter_passes() if p.loader is not None]


def _put_back(ns: dict[str, Any], name: str, rebuilt: Any, original: Any) -> Callable[[], None]:
    """Undo a loader swap in the namespace, unless the cell rebound the name."""

    def put_back() -> None:
        if ns.get(name) is rebuilt:
            ns[name] = original

    return put_back
