"""Run a cell once with the probes on, stop it after the first epoch, and turn
what was recorded into an ``EpochProfile``.

The cell is compiled under a file name registered in IPython's compile cache,
so a traceback from the cell shows the user's own line (``Cell In[5], line
4``), not ``<timed exec>``.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from IPython.core.error import UsageError

from epochmagic.analysis.run import RunResult
from epochmagic.analysis.timeline import analyse
from epochmagic.capture import cudaclock
from epochmagic.capture.probes import Probes, StopCell
from epochmagic.capture.recorder import Recorder
from epochmagic.capture.retime import to_device_time
from epochmagic.model.cell import Cell


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


def run_cell(
    cell: Cell,
    user_ns: dict[str, Any],
    *,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    loader_name: str | None = None,
    capture: bool = False,
    tracer: Any = None,
    substitute: Any = None,
    autocast: Any = None,
    on_step: Any = None,
    time_modules: bool = False,
    skip_epochs: int = 0,
) -> RunResult:
    """Execute the cell once under the probes; never lets a probe outlive it."""
    __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
    clock = cudaclock.make_clock()
    rec = Recorder(clock=clock.now) if clock is not None else Recorder()

    def measure() -> None:
        """Start the clocks: at the cell's start, or after --skip-epochs."""
        if clock is not None:
            clock.begin()
        rec.begin()

    probes = Probes(
        rec,
        max_steps=max_steps,
        max_seconds=max_seconds,
        loader_name=loader_name,
        user_ns=user_ns,
        substitute=substitute,
        autocast=autocast,
        on_step=on_step,
        time_modules=time_modules,
        device=clock,
        skip_epochs=skip_epochs,
        on_measure=measure,
    )
    status, reason = "ok", "end"
    exc: BaseException | None = None
    output = None
    with _captured() if capture else contextlib.nullcontext() as cap:
        with probes:
            if skip_epochs:
                rec.begin()  # host time only: the device clock starts with the measured epoch
            else:
                measure()
            try:
                if tracer is not None:
                    with tracer:
                        exec(cell.code, user_ns)
                else:
                    exec(cell.code, user_ns)
            except StopCell as stop:
                reason = stop.reason
                stop.__traceback__ = None
            except KeyboardInterrupt as e:
                status, reason, exc = "interrupted", "interrupted", e
            except torch.OutOfMemoryError as e:
                status, reason, exc = "oom", "error", e
            except BaseException as e:  # noqa: BLE001 (the user's error, re-raised by the magic)
                status, reason, exc = "error", "error", e
                if _is_cpu_oom(e):
                    status = "oom"
            finally:
                rec.finish()
                device_time = clock.finish() if clock is not None else None
            iterators = [p.iterator for p in probes.passes.values() if p.iterator is not None]
            compiled = probes.compile_watch.result()
            intervals = list(probes.compile_watch.intervals)
    if reason == "end" and probes.stopped is not None:
        # code the cell called caught StopCell and returned normally (Ignite's
        # EXCEPTION_RAISED handlers, a bare ``except:``): the stop still happened
        reason = probes.stopped.reason
    if cap is not None:
        output = cap.stdout + cap.stderr
    end = probes.stop_time if probes.stop_time is not None else rec.end
    if device_time is not None:
        end = to_device_time(rec, probes, device_time, end)
        intervals = [(device_time.at(a), device_time.at(b)) for a, b in intervals]
    timeline = analyse(
        rec.events,
        rec.start,
        end,
        trained_param_ids=probes.trained_param_ids(),
        clock_opt=probes.clock_opt,
        busy=device_time.busy if device_time is not None else None,
        busy_estimate=device_time.busy_estimate if device_time is not None else None,
    )
    if exc is not None:
        exc = _from_cell(exc, cell.filename)
    return RunResult(
        status,
        reason,
        exc,
        timeline,
        probes,
        output,
        iterators,
        rec.cpu_end - rec.cpu_start,
        clock,
        compiled,
        intervals,
    )


@contextlib.contextmanager
def _captured() -> Iterator[Any]:
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        yield cap


def _is_cpu_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, RuntimeError)) and (
        isinstance(e, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(e)
    )


def _from_cell(exc: BaseException, filename: str) -> BaseException:
    """Drop epochmagic's own frames above the cell from the traceback."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if tb is not None:
        exc.__traceback__ = tb
    return exc
