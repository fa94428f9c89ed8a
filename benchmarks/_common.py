"""Shared helpers for the benchmarks: a real IPython shell, timed cells,
alternated orders, medians and spreads, and the tables they print.

Every benchmark runs in one process, drives ``%%epochprofile`` through a real
IPython shell (``IPython.testing.globalipapp``), prints what it measured and a
PASS/FAIL line, and exits 0 either way: they are measurements, not tests. A
cell that fails (the benchmark itself is broken) prints its output and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


# -- command line -------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats: a smoke check, not a measurement"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch.set_num_threads(N) for the whole run (default: torch's own choice)",
    )
    return p


# -- the shell ----------------------------------------------------------------------
class CellFailed(RuntimeError):
    pass


@dataclass
class CellRun:
    seconds: float  # wall time of the whole ip.run_cell
    output: str  # what the cell printed (stdout and stderr)


def start_shell(threads: int | None = None) -> Any:
    """A real IPython shell with epochmagic loaded."""
    import torch
    from IPython.testing.globalipapp import start_ipython

    if threads is not None:
        torch.set_num_threads(threads)
    ip = start_ipython()
    run(ip, "%load_ext epochmagic")
    return ip


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture what a cell prints (reports, notes) so the tables stay readable:
    Python's prints, and what C++ writes to file descriptors 1 and 2 (kineto's
    ``profiler_start`` lines under torch.profiler); the latter is appended to the
    buffer afterwards."""
    buf = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield buf
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            buf.write(sink.read().decode(errors="replace"))


def run(ip: Any, source: str) -> CellRun:
    """Run one cell, timed from outside; raise CellFailed if it failed."""
    gc.collect()
    with quiet() as buf:
        t0 = time.perf_counter()
        result = ip.run_cell(source)
        seconds = time.perf_counter() - t0
    if not result.success:
        err = result.error_in_exec or result.error_before_exec
        raise CellFailed(
            f"cell failed: {err!r}\n--- cell ---\n{source}\n--- output ---\n"
            f"{buf.getvalue()[-4000:]}"
        )
    return CellRun(seconds, buf.getvalue())


def ns(ip: Any, name: str) -> Any:
    return ip.user_ns[name]


def main_guard(fn: Any) -> None:
    """Run ``fn()``; a broken cell exits 2 with its output, anything else 0."""
    try:
        fn()
    except CellFailed as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


# -- alternation --------------------------------------------------------------------
def alternated(conditions: Sequence[str], rounds: int) -> Iterator[tuple[int, list[str]]]:
    """A B, B A, A B, ... (A B C, C B A, ... for three): each condition runs
    first as often as last, so drift and warm-up do not favour one."""
    for i in range(rounds):
        order = list(conditions)
        yield i, (order if i % 2 == 0 else order[::-1])


# -- statistics and formatting --------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``median (min..max)``."""
    if not values:
        return "n/a"
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(name: str, ok: bool, detail: str) -> None:
    print(f"\n{'PASS' if ok else 'FAIL'}  {name}: {detail}")


def header(title: str, args: argparse.Namespace, extra: str = "") -> None:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"== {title} ==")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, python {sys.version.split()[0]}, load average {load[0]:.2f} at start"
        + (", QUICK mode (smoke check: too few repeats to judge)" if args.quick else "")
    )
    if extra:
        print(extra)
    print()


def footer_load() -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"(load average {load[0]:.2f} at the end; above ~0.5 the machine was shared)")
