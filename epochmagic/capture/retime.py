"""Moving a run's host timestamps onto the CUDA timeline, once it is over."""

from __future__ import annotations

from epochmagic.capture import recorder as r
from epochmagic.capture.devicetime import DeviceTime
from epochmagic.capture.probes import Probes
from epochmagic.capture.recorder import Recorder


def to_device_time(rec: Recorder, probes: Probes, dt: DeviceTime, end: float) -> float:
    """Move everything the probes timed onto the device timeline (in place);
    returns the run's end there. A sync's event also gets the host's wait in it."""
    at = dt.at
    rec.events[:] = [
        (at(t), kind, obj, (*info, dt.wait_before(t)) if kind == r.SYNC else info)
        for t, kind, obj, info in rec.events
    ]
    rec.start = at(rec.start)
    probes.grad_marks[:] = [(at(t), k) for t, k in probes.grad_marks]
    probes.module_spans[:] = [(at(a), at(b), k) for a, b, k in probes.module_spans]
    return at(end)
