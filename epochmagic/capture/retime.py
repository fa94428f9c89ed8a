"""Moving a run's host timestamps onto the CUDA timeline, once it is over."""

from __future__ import annotations

from collections.abc import Sequence

from epochmagic.capture.devicetime import DeviceTime
from epochmagic.capture.probes import Probes
from epochmagic.capture.recorder import Recorder
from epochmagic.capture.sampler import Sample
from epochmagic.model.events import SYNC, Event


def to_device_time(rec: Recorder, probes: Probes, dt: DeviceTime, end: float) -> float:
    """Move everything the probes timed onto the device timeline (in place);
    returns the run's end there. A sync's record also gets the host's wait
    (``SyncInfo.wait``), read at its host time."""
    at = dt.at
    rec.events[:] = [
        Event(
            at(e.t),
            e.kind,
            e.obj,
            e.info._replace(wait=dt.wait_before(e.t)) if e.kind == SYNC else e.info,
        )
        for e in rec.typed_events()
    ]
    rec.start = at(rec.start)
    probes.grad_marks[:] = [(at(t), k) for t, k in probes.grad_marks]
    probes.module_spans[:] = [(at(a), at(b), k) for a, b, k in probes.module_spans]
    return at(end)


def samples_to_device_time(samples: Sequence[Sample], dt: DeviceTime) -> list[Sample]:
    """The stack samples moved as :func:`to_device_time` moves the events: each
    look's time with ``dt.at``, and its weight the moved span since the
    previous look (``at(t) - at(t - dt)``), so the weights still tile the
    device timeline as the host's tiled the host's."""
    at = dt.at
    return [Sample(at(s.t), max(0.0, at(s.t) - at(s.t - s.dt)), s.stack) for s in samples]
