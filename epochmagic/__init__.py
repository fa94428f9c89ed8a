"""epochmagic: why is each epoch running so slowly?

``%load_ext epochmagic``, then ``%%epochprofile`` on an unmodified PyTorch
training cell measures its first epoch and shows where the time went.
"""

from __future__ import annotations

from typing import Any

from epochmagic.model import registry
from epochmagic.model.profile import EpochProfile, Finding, LineStat
from epochmagic.model.thresholds import THRESHOLD_SOURCES, THRESHOLDS
from epochmagic.report import charts, htmlreport, textreport, trace


def _dashboard(prof: EpochProfile) -> Any:
    from epochmagic.report.dashboard import Dashboard  # ipywidgets: only when shown

    return Dashboard(prof).widget


# EpochProfile's methods reach the report layer through the registry (no cycle)
registry.provide(
    text=textreport.render,
    html_report=htmlreport.report,
    html_page=htmlreport.page,
    breakdown_png=charts.breakdown,
    dashboard=_dashboard,
    chrome_trace=trace.chrome_trace,
)

__all__ = [
    "EpochProfile",
    "Finding",
    "LineStat",
    "THRESHOLDS",
    "THRESHOLD_SOURCES",
    "load_ipython_extension",
    "unload_ipython_extension",
]
__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    from epochmagic.magic import EpochMagics

    ipython.register_magics(EpochMagics)


def unload_ipython_extension(ipython: Any) -> None:
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("epochprofile", None)
    manager.registry.pop("EpochMagics", None)
