"""Sampled lines on hand-made stacks with known answers: which frames are
lines (own code, a library's loop; torch, the standard library and deeper
libraries rolled up), and what each line's time, ticks, phases and waits are."""

from __future__ import annotations

import linecache
import os
import textwrap
import types

import pytest
import torch

from epochmagic.analysis import samplelines as sl
from epochmagic.analysis.samplelines import Places, sampled_lines
from epochmagic.analysis.timeline import Sync, Timeline, analyse
from epochmagic.capture import recorder as r
from epochmagic.capture.recorder import Pass
from epochmagic.capture.sampler import Sample

SITE = "/x/site-packages"
STDLIB = "/x/lib/python3.11"
PLACES = Places(paths=[SITE, STDLIB], stdlib=[STDLIB], ours=f"{SITE}/epochmagic")

CELL, FUNCS = "<ipython-input-5-cell>", "<ipython-input-3-funcs>"
LABELS = {CELL: "Cell In[5]", FUNCS: "Cell In[3]"}
TRAINER = f"{SITE}/transformers/trainer.py"
BERT = f"{SITE}/transformers/models/bert/modeling_bert.py"
ACCEL = f"{SITE}/accelerate/accelerator.py"
TORCH = f"{SITE}/torch/nn/modules/module.py"
DYNAMO = f"{SITE}/torch/_dynamo/eval_frame.py"
JSON = f"{STDLIB}/json/encoder.py"
SHELL = f"{SITE}/IPython/core/interactiveshell.py"
PROBE = f"{SITE}/epochmagic/capture/probes/forward.py"

# one function per file is enough: a frame is (code, line), the line is free
SOURCE = """
def f():
    x = 1
    y = 2
    return x + y
"""


@pytest.fixture(autouse=True)
def fake_sources():
    """Source lines for the made-up files, as IPython registers a cell's."""
    files = [CELL, FUNCS, TRAINER, BERT, ACCEL, TORCH, DYNAMO, JSON, SHELL, PROBE]
    for name in files:
        lines = [f"{os.path.basename(name)} line {i}\n" for i in range(1, 4000)]
        linecache.cache[name] = (1, None, lines, name)
    yield
    for name in files:
        linecache.cache.pop(name, None)


def code_in(filename: str) -> types.CodeType:
    module = compile(textwrap.dedent(SOURCE), filename, "exec")
    (fn,) = [c for c in module.co_consts if isinstance(c, types.CodeType)]
    return fn


CODE = {
    name: code_in(name)
    for name in (CELL, FUNCS, TRAINER, BERT, ACCEL, TORCH, DYNAMO, JSON, SHELL, PROBE)
}


def stack(*frames: tuple[str, int]) -> tuple[tuple[types.CodeType, int], ...]:
    """Innermost first, as the sampler keeps it."""
    return tuple((CODE[f], line) for f, line in frames)


def timeline(
    wall_s: float = 10.0,
    spans: list[tuple[float, float, str]] | None = None,
    syncs: list[Sync] | None = None,
) -> Timeline:
    return Timeline(
        start=0.0,
        wall_s=wall_s,
        phases={},
        step_bounds=[],
        step_phases=[],
        step_samples=[],
        step_tokens=[],
        memory_samples=[],
        step_memory=[],
        clock="none",
        training_pass=None,
        syncs=syncs or [],
        phase_spans=spans if spans is not None else [(0.0, wall_s, "other")],
    )


def lines(samples: list[Sample], tl: Timeline | None = None, limit: int = 200) -> dict:
    out = sampled_lines(
        samples,
        tl or timeline(),
        own=lambda f: f in LABELS,
        label=LABELS.__getitem__,
        limit=limit,
        places=PLACES,
    )
    return {(s.filename, s.lineno): s for s in out}


def test_own_lines_include_their_calls():
    samples = [
        Sample(1.0, 0.5, stack((FUNCS, 4), (CELL, 2))),  # the cell's line 2 calls f
        Sample(1.5, 0.5, stack((FUNCS, 4), (CELL, 2))),
        Sample(2.0, 0.5, stack((CELL, 3))),
    ]
    got = lines(samples)
    assert set(got) == {("Cell In[5]", 2), ("Cell In[5]", 3), ("Cell In[3]", 4)}
    assert got["Cell In[5]", 2].time_s == pytest.approx(1.0)
    assert got["Cell In[5]", 2].ticks == 2
    assert got["Cell In[3]", 4].time_s == pytest.approx(1.0)
    assert got["Cell In[5]", 3].time_s == pytest.approx(0.5)
    s = got["Cell In[3]", 4]
    assert s.hits is None and s.source == "<ipython-input-3-funcs> line 4"


def test_files_that_share_a_label_keep_their_own_lines():
    # cells run without history share an execution count, so their label
    samples = [Sample(1.0, 0.5, stack((FUNCS, 4), (CELL, 4)))]
    out = sampled_lines(
        samples, timeline(), own=lambda f: f in LABELS, label=lambda f: "Cell In[1]", places=PLACES
    )
    assert sorted((s.filename, s.lineno, s.source) for s in out) == [
        ("Cell In[1]", 4, "<ipython-input-3-funcs> line 4"),
        ("Cell In[1]", 4, "<ipython-input-5-cell> line 4"),
    ]
    assert all(s.ticks == 1 and s.time_s == 0.5 for s in out)


def test_a_library_loop_is_expanded_and_torch_rolls_up():
    # cell -> Trainer.train -> inner loop -> training_step -> torch (-> dynamo)
    s = stack(
        (DYNAMO, 400),
        (TORCH, 1500),
        (TRAINER, 2543),
        (TRAINER, 2000),
        (TRAINER, 1800),
        (CELL, 6),
        (SHELL, 3000),  # the shell that ran the cell: not called from own code
    )
    got = lines([Sample(1.0, 0.01, s)])
    assert set(got) == {
        ("Cell In[5]", 6),
        ("transformers/trainer.py", 1800),
        ("transformers/trainer.py", 2000),
        ("transformers/trainer.py", 2543),
    }
    assert got["transformers/trainer.py", 2543].source == "trainer.py line 2543"


def test_deeper_libraries_roll_up_into_the_loop_line_that_called_them():
    samples = [
        # the Trainer calls accelerate: accelerate's frames are not lines
        Sample(1.0, 0.1, stack((TORCH, 10), (ACCEL, 2100), (TRAINER, 2400), (CELL, 6))),
        # the model's forward runs under torch: the stack has left the Trainer
        Sample(1.1, 0.1, stack((BERT, 900), (TORCH, 1500), (TRAINER, 3200), (CELL, 6))),
    ]
    got = lines(samples)
    assert set(got) == {
        ("Cell In[5]", 6),
        ("transformers/trainer.py", 2400),
        ("transformers/trainer.py", 3200),
    }


def test_own_code_called_by_torch_is_a_line_again():
    # the cell calls model(x); torch's Module.__call__ runs a notebook forward
    s = stack((TORCH, 20), (FUNCS, 3), (TORCH, 1500), (TORCH, 1510), (CELL, 7))
    assert set(lines([Sample(1.0, 0.1, s)])) == {("Cell In[5]", 7), ("Cell In[3]", 3)}


def test_epochmagic_frames_are_skipped_but_not_a_break():
    # the cell -> our probe around a call -> the Trainer: still the Trainer's loop
    s = stack((TRAINER, 1900), (PROBE, 50), (CELL, 6), (PROBE, 10), (SHELL, 3000))
    assert set(lines([Sample(1.0, 0.1, s)])) == {
        ("Cell In[5]", 6),
        ("transformers/trainer.py", 1900),
    }


def test_the_standard_library_always_rolls_up():
    s = stack((JSON, 200), (CELL, 8))
    assert set(lines([Sample(1.0, 0.1, s)])) == {("Cell In[5]", 8)}


def test_recursion_counts_a_line_once_per_sample():
    s = stack((FUNCS, 4), (FUNCS, 4), (FUNCS, 4), (FUNCS, 5), (CELL, 2))
    got = lines([Sample(1.0, 0.25, s)])
    assert got["Cell In[3]", 4].ticks == 1
    assert got["Cell In[3]", 4].time_s == pytest.approx(0.25)
    assert got["Cell In[3]", 5].ticks == 1


def test_phase_ticks_come_from_the_phase_spans():
    tl = timeline(spans=[(0.0, 1.0, "data"), (1.0, 2.0, "forward"), (2.0, 10.0, "other")])
    samples = [Sample(t, 0.1, stack((CELL, 2))) for t in (0.5, 1.5, 1.7, 2.5)]
    s = lines(samples, tl)["Cell In[5]", 2]
    assert s.phase_ticks == {"data": 1, "forward": 2, "other": 1}
    assert sum(s.phase_ticks.values()) == s.ticks == 4


def test_wait_ticks_mark_samples_taken_while_the_host_waited():
    syncs = [
        Sync(1.6, CELL, 7, False, 0.2),  # the host waited from 1.4 to 1.6
        Sync(3.0, CELL, 7, False, 0.0),  # no wait (the CPU, or nothing queued)
    ]
    samples = [
        Sample(1.5, 0.1, stack((CELL, 7))),  # at 1.5: inside the wait
        Sample(1.6002, 0.1, stack((CELL, 7))),  # a tick deferred to the wait's end
        Sample(1.7, 0.1, stack((CELL, 7))),  # its interval overlaps the wait; taken after
        Sample(3.05, 0.1, stack((CELL, 7))),
    ]
    s = lines(samples, timeline(syncs=syncs))["Cell In[5]", 7]
    assert s.ticks == 4 and s.wait_ticks == 2
    assert "wait" not in s.phase_ticks  # a mark, never a phase


def test_time_is_the_sum_of_weights_inside_the_run():
    tl = timeline(wall_s=2.0)
    samples = [
        Sample(0.05, 0.1, stack((CELL, 2))),  # began before the run: cut at its start
        Sample(0.15, 0.1, stack((CELL, 2))),
        Sample(0.6, 0.45, stack((CELL, 3))),
        Sample(2.5, 0.5, stack((CELL, 2))),  # after the run: left out
    ]
    got = lines(samples, tl)
    assert got["Cell In[5]", 2].time_s == pytest.approx(0.15)
    assert got["Cell In[5]", 2].ticks == 2
    assert got["Cell In[5]", 3].time_s == pytest.approx(0.45)


def test_limit_keeps_the_slowest_lines_in_order():
    samples = [Sample(0.1 * k, 0.01 * k, stack((CELL, k))) for k in range(1, 8)]
    out = sampled_lines(
        samples,
        timeline(),
        own=lambda f: f in LABELS,
        label=LABELS.__getitem__,
        limit=3,
        places=PLACES,
    )
    assert [s.lineno for s in out] == [7, 6, 5]
    assert [s.time_s for s in out] == sorted((s.time_s for s in out), reverse=True)


def test_places_on_this_interpreter():
    places = Places()

    def where(path: str) -> sl.Where:
        return places.where(path, own=not_own, label=str)

    assert where(torch.nn.modules.module.__file__).role == sl.ROLL_UP
    assert where(torch._dynamo.__file__).role == sl.ROLL_UP
    assert where(linecache.__file__).role == sl.ROLL_UP  # the standard library
    assert where(sl.__file__).role == sl.OURS
    assert where("<frozen importlib._bootstrap>").role == sl.ROLL_UP
    import IPython.core.interactiveshell as shell_mod

    w = where(shell_mod.__file__)
    assert (w.role, w.package, w.shown) == (
        sl.LIBRARY,
        "IPython",
        "IPython/core/interactiveshell.py",
    )
    assert places.where("anything", own=lambda f: True, label=lambda f: "Cell In[1]") == sl.Where(
        sl.OWN, "Cell In[1]", "", "anything"
    )


def not_own(filename: str) -> bool:
    return False


def test_the_innermost_sys_path_entry_names_the_package():
    # a site-packages inside the standard library's directory (no venv)
    places = Places(paths=[STDLIB, f"{STDLIB}/site-packages"], stdlib=[STDLIB], ours="/elsewhere")
    w = places.where(f"{STDLIB}/site-packages/lightning/pytorch/loops/fit_loop.py", not_own, str)
    assert (w.role, w.package, w.shown) == (
        sl.LIBRARY,
        "lightning",
        "lightning/pytorch/loops/fit_loop.py",
    )
    assert places.where(f"{STDLIB}/threading.py", not_own, str).role == sl.ROLL_UP
    single = places.where(f"{STDLIB}/site-packages/six.py", not_own, str)
    assert (single.role, single.package) == (sl.LIBRARY, "six")
    assert places.where("/nowhere/x.py", not_own, str).role == sl.ROLL_UP


def test_phase_spans_tile_the_run_and_add_up_to_the_phases():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    p = Pass(object(), frozenset({("loader", 1)}), 0.0, trained=True)
    t, events = 0.0, []

    def ev(kind: int, obj: object = None, info: object = None, ms: float = 0.0) -> None:
        nonlocal t
        events.append((t, kind, obj, info))
        t += ms / 1000

    ev(r.ITER_ENTER, p, ms=2)
    ev(r.ITER_EXIT, p)
    for _ in range(3):
        ev(r.NEXT_ENTER, p, ms=1)
        p.yielded += 1
        ev(r.NEXT_EXIT, p, (8, None, None))
        ev(r.FWD_ENTER, model, (True, True, 8, None), ms=2)
        ev(r.FWD_EXIT, model)
        ev(r.BWD_ENTER, ms=3)
        ev(r.BWD_EXIT)
        ev(r.OPT_ENTER, opt, ms=1)
        ev(r.OPT_EXIT, opt, ms=0.5)
    tl = analyse(events, 0.0, t + 0.002, trained_param_ids={id(q) for q in model.parameters()})
    spans = tl.phase_spans
    assert spans[0][0] == tl.start and spans[-1][1] == pytest.approx(tl.start + tl.wall_s)
    for (_, a1, pa), (b0, _, pb) in zip(spans, spans[1:]):
        assert a1 == b0 and pa != pb  # contiguous, neighbours merged
    for phase, secs in tl.phases.items():
        assert sum(b - a for a, b, p2 in spans if p2 == phase) == pytest.approx(secs, abs=1e-12)
    assert {p2 for _, _, p2 in spans} >= {"data", "forward", "backward", "optimizer"}
