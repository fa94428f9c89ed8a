"""Small pieces the dashboard's tabs share: the layout rules that keep every
control unclipped, the progress adapter, number formatting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile

# Layout: nothing may be cut at a 1024 px wide window, where JupyterLab with its
# file browser open leaves the output about 560 px. Rows wrap instead of running
# past the right edge; descriptions take the width their text needs (ipywidgets
# cuts them at 80 px with an ellipsis otherwise); buttons are as wide as their
# label (148 px by default, which cut "Export Perfetto trace").
FIT = {"description_width": "initial"}
CELL = 260  # px: the narrowest what-if grid column; a control fills its column
WRAP = {"flex_flow": "row wrap", "align_items": "center"}
IMAGE = {"max_width": "min(820px, 100%)"}


def button_layout(min_width: str = "120px") -> dict[str, str]:
    return {"width": "auto", "min_width": min_width, "flex": "0 0 auto"}


class ProgressBar:
    """The tqdm-like progress interface ``whatif`` drives, on an IntProgress."""

    def __init__(self, widget: Any) -> None:
        self.widget = widget

    def reset(self, total: int) -> None:
        self.widget.max, self.widget.value = max(1, total), 0

    def set_description(self, text: str) -> None:
        self.widget.description = text[:40]

    def refresh(self) -> None:
        pass

    @property
    def n(self) -> int:
        return int(self.widget.value)

    @n.setter
    def n(self, value: int) -> None:
        self.widget.value = value


def number(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def peak_mib(p: EpochProfile) -> str:
    peak = p.memory.get("peak_bytes") if p.memory else None
    return f"{peak / 2**20:,.0f} MiB" if peak else "-"


def predicted_mib(p: EpochProfile) -> str:
    peak = (p.predicted or {}).get("peak_bytes")
    return f" (predicted {peak / 2**20:,.0f})" if peak else ""
