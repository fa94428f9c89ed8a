"""Hot lines from the stack samples of the measured epoch (docs/design.md §4.6).

Each sample (:class:`epochmagic.capture.sampler.Sample`) is a look at the main
thread's stack. A line gets a sample's weight (``dt``) when the sample's stack
holds it, so ``time_s`` includes the calls a line makes, as traced lines do. Which
frames are lines is one rule, :func:`line_frames`: the cell's and notebook
functions' frames, and the loop of a library the user's code called (a Trainer),
while everything deeper (torch, the standard library, a library called by a
library) rolls up into the line that called into it, so torch internals never
flood the list.
"""

from __future__ import annotations

import bisect
import linecache
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import CodeType
from typing import NamedTuple

from epochmagic.analysis.timeline import Timeline
from epochmagic.capture.sampler import Sample
from epochmagic.model.profile import LineStat
from epochmagic.model.thresholds import threshold
from epochmagic.model.vocabulary import PHASES

OURS_DIR = str(Path(__file__).resolve().parent.parent)  # the epochmagic package
ROLLED_UP = frozenset({"torch"})  # libraries never expanded, even when the user calls them
OWN, OURS, LIBRARY, ROLL_UP = "own", "ours", "library", "roll-up"


class Where(NamedTuple):
    """What a code object is to the lines: its ``role`` (OWN, OURS, LIBRARY
    or ROLL_UP), the name it is shown by (own: ``label(f)``; library: a short
    path), its top-level package (libraries), and its real file (for source)."""

    role: str
    shown: str
    package: str
    file: str


Key = tuple[Where, int]  # a line: its file (as placed) and number; labels may repeat


class Places:
    """Which top-level package a file belongs to: the directory (or module)
    right under the longest ``paths`` entry (sys.path) that holds it. Entries
    under ``stdlib`` are the standard library; files under ``ours`` are
    epochmagic's. Tests pass made-up paths."""

    def __init__(
        self,
        paths: Iterable[str] | None = None,
        stdlib: Iterable[str] | None = None,
        ours: str = OURS_DIR,
    ) -> None:
        stdlib = list(_stdlib_dirs() if stdlib is None else stdlib)
        entries = {_norm(p) for p in (sys.path if paths is None else paths)} | {
            _norm(d) for d in stdlib
        }
        self.roots = sorted(entries, key=len, reverse=True)  # longest (innermost) first
        self.stdlib = [_norm(d) for d in stdlib]
        self.ours = _norm(ours)

    def where(
        self, filename: str, own: Callable[[str], bool], label: Callable[[str], str]
    ) -> Where:
        if own(filename):
            return Where(OWN, label(filename), "", filename)
        if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>: no package
            return Where(ROLL_UP, filename, "", filename)
        path = _norm(filename)
        if _under(path, self.ours):
            return Where(OURS, filename, "", filename)
        root = next((r for r in self.roots if _under(path, r) and path != r), None)
        if root is None:
            return Where(ROLL_UP, filename, "", filename)
        short = os.path.relpath(path, root).replace(os.sep, "/")
        package = short.split("/", 1)[0].split(".", 1)[0]
        if package in ROLLED_UP or self._is_stdlib(root):
            return Where(ROLL_UP, short, package, filename)
        return Where(LIBRARY, short, package, filename)

    def _is_stdlib(self, root: str) -> bool:
        parts = set(Path(root).parts)
        if "site-packages" in parts or "dist-packages" in parts:
            return False
        return any(_under(root, d) for d in self.stdlib)


def line_frames(stack: Sequence[tuple[Where, int]]) -> set[Key]:
    """The lines a stack (innermost first) holds, each once.

    Outermost first: an own frame (cell, notebook function) is a line. A
    LIBRARY frame is a line when its caller, the nearest frame that is not
    epochmagic's (OURS frames are skipped), is an own frame or a line of the
    same package: the loop a library runs for the user's code (a Trainer),
    expanded until the stack leaves it. Every other frame (torch, the standard
    library, a library called by a library) rolls up into the line above it.
    """
    keys: set[Key] = set()
    expanding: str | None = None  # "" after an own line, a package after its line
    for where, lineno in reversed(stack):
        if where.role == OURS:
            continue
        if where.role == OWN:
            keys.add((where, lineno))
            expanding = ""
        elif where.role == LIBRARY and expanding in ("", where.package):
            keys.add((where, lineno))
            expanding = where.package
        else:
            expanding = None
    return keys


class _Acc:
    __slots__ = ("time_s", "ticks", "phases", "wait")

    def __init__(self) -> None:
        self.time_s, self.ticks, self.wait = 0.0, 0, 0
        self.phases: dict[str, int] = {}


def sampled_lines(
    samples: Sequence[Sample],
    timeline: Timeline,
    own: Callable[[str], bool],
    label: Callable[[str], str],
    limit: int = 200,
    places: Places | None = None,
) -> list[LineStat]:
    """The ``limit`` slowest lines (:func:`line_frames`) of the samples taken
    during the run (``timeline.start`` to its end; sample times on the
    timeline's clock). A sample weighs its ``dt`` (cut at the run's start),
    counts for the phase open at its time (``timeline.phase_spans``) and is a
    wait tick when the host was waiting in a sync at its time (or the wait had
    just ended: a tick deferred by a C call that waits runs at its return)."""
    places = places or Places()
    start, end = timeline.start, timeline.start + timeline.wall_s
    where: dict[int, Where] = {}  # by id: equal code objects may live in different files
    phase_of = _phase_lookup(timeline.phase_spans)
    waits = _wait_spans(timeline)
    late = threshold("sample_wait_late_s")
    acc: dict[Key, _Acc] = {}
    for s in samples:
        if not start <= s.t <= end:
            continue
        keys = _keys(s.stack, where, places, own, label)
        w, phase = min(s.dt, s.t - start), phase_of(s.t)
        waited = _waiting(waits, s.t, late)
        for key in keys:
            a = acc.get(key)
            if a is None:
                a = acc[key] = _Acc()
            a.time_s += w
            a.ticks += 1
            a.phases[phase] = a.phases.get(phase, 0) + 1
            a.wait += waited
    top = sorted(acc.items(), key=lambda kv: (-kv[1].time_s, kv[0][0].shown, kv[0][1]))
    top = top[: max(0, limit)]
    return [_stat(key, a) for key, a in top]


def _keys(
    stack: tuple[tuple[CodeType, int], ...],
    where: dict[int, Where],
    places: Places,
    own: Callable[[str], bool],
    label: Callable[[str], str],
) -> set[Key]:
    """A stack's lines (:func:`line_frames`), its code objects' places cached."""
    frames = []
    for code, lineno in stack:
        w = where.get(id(code))
        if w is None:
            w = where[id(code)] = places.where(code.co_filename, own, label)
        frames.append((w, lineno if lineno is not None else code.co_firstlineno))
    return line_frames(frames)


def _stat(key: Key, a: _Acc) -> LineStat:
    where, lineno = key
    source = linecache.getline(where.file, lineno).strip()
    phases = {p: a.phases[p] for p in PHASES if p in a.phases}
    return LineStat(where.shown, lineno, source, None, a.time_s, a.ticks, phases, a.wait)


def _phase_lookup(spans: list[tuple[float, float, str]]) -> Callable[[float], str]:
    """The phase of the span open at ``t`` (``other`` outside them all)."""
    starts = [a for a, _, _ in spans]

    def phase(t: float) -> str:
        i = bisect.bisect_right(starts, t) - 1
        return spans[i][2] if i >= 0 and t <= spans[i][1] else "other"

    return phase


def _wait_spans(timeline: Timeline) -> list[tuple[float, float]]:
    """Where the host waited in a sync (``(t - wait, t)``), merged, in order."""
    spans = sorted((s.t - s.wait, s.t) for s in timeline.syncs if s.wait > 0)
    out: list[tuple[float, float]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _waiting(spans: list[tuple[float, float]], t: float, late: float) -> bool:
    """Whether ``t`` falls in one of ``spans`` (merged, ordered) or at most
    ``late`` seconds after its end."""
    i = bisect.bisect_right(spans, (t, float("inf")))
    return i > 0 and t <= spans[i - 1][1] + late


def _stdlib_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"]}
    dirs |= {p for p in sys.path if p.endswith(".zip") and _under(_norm(p), _norm(sys.base_prefix))}
    return sorted(dirs)


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
