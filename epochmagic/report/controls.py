"""The what-if panel's controls, generated from ``vocabulary.SETTINGS`` so a new
setting shows in the dashboard without touching it: an int becomes a slider
where ``LOOKS`` gives a maximum (a bounded number box otherwise), a bool a
checkbox, a str with choices a dropdown. ``LOOKS`` only says how a setting is
presented; the two that need more (batch sizes, precisions the device cannot
run) have their own builders."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from epochmagic.model.vocabulary import PRECISIONS, SETTINGS, Setting
from epochmagic.report.widgets import FIT
from epochmagic.whatif import changes

if TYPE_CHECKING:
    from epochmagic.model.profile import EpochProfile

Values = dict[str, Any]
# (ipywidgets module, setting, baseline profile, description/style/layout) -> widget
Builder = Callable[[Any, Setting, "EpochProfile", dict[str, Any]], Any]


def precision_options(prof: EpochProfile) -> list[tuple[str, str]]:
    """Precision options; one the device cannot run says why (a Dropdown
    cannot grey out single options, and a what-if would only say
    'unsupported' after the click)."""
    device = str(prof.config.get("device") or "cpu").split(":")[0]
    dtypes = {"bf16": "bfloat16", "fp16": "float16"}
    options = []
    for name in PRECISIONS:
        label = name
        if name in dtypes:
            import torch

            try:
                changes.check_precision(device, getattr(torch, dtypes[name]), name)
            except changes.Unsupported as e:
                label = f"{name} (cannot run: {str(e).split(': ', 1)[-1][:40]})"
        options.append((label, name))
    return options


def _precision(w: Any, s: Setting, prof: EpochProfile, fit: dict[str, Any]) -> Any:
    options = precision_options(prof)
    # an option that says why the device cannot run it needs the whole row
    # (grid_area, not grid_column: ipywidgets applies grid_area last, and
    # clearing it clears grid-column too)
    if max(len(label) for label, _ in options) > 16:
        fit = {**fit, "layout": {"width": "auto", "grid_area": "auto / 1 / auto / -1"}}
    return w.Dropdown(options=options, value=prof.config.get(s.name) or PRECISIONS[0], **fit)


def _batch_size(w: Any, s: Setting, prof: EpochProfile, fit: dict[str, Any]) -> Any:
    """Powers of two and the baseline's own size; disabled where the baseline
    has no batch size to change."""
    bs = int(prof.config.get(s.name) or 0)
    sizes = sorted({2**i for i in range(0, 13)} | ({bs} if bs else set()))
    return w.SelectionSlider(options=sizes, value=bs if bs else 1, disabled=not bs, **fit)


def _prefetch_applies(values: Values, cfg: Values) -> bool:
    """A DataLoader takes prefetch_factor only with workers; 2 is its default."""
    return bool(values["workers"] and (values["prefetch_factor"] != 2 or cfg.get("workers")))


@dataclass(frozen=True)
class Look:
    """How one setting shows. ``maximum``: an int's slider end ("cores": the
    machine's CPU count); ``default``: an int's value where the baseline has
    none (else its minimum); ``applies``: whether the what-if takes the value
    (from all the controls' values and the baseline config); ``build``: a
    builder of its own."""

    description: str | None = None
    maximum: int | str | None = None
    default: int | None = None
    applies: Callable[[Values, Values], bool] | None = None
    build: Builder | None = None


LOOKS = {
    "batch_size": Look("batch size", build=_batch_size),
    "workers": Look(maximum="cores"),
    "precision": Look(build=_precision),
    "threads": Look(maximum="cores"),
    "prefetch_factor": Look("prefetch", maximum=8, default=2, applies=_prefetch_applies),
    "fused": Look("fused optimizer"),
}


def _by_kind(w: Any, s: Setting, look: Look, value: Any, cores: int, fit: dict[str, Any]) -> Any:
    if s.kind is bool:
        return w.Checkbox(value=bool(value), indent=False, **fit)
    if s.kind is int:
        low = s.minimum or 0
        start = int(value or (low if look.default is None else look.default))
        top = cores if look.maximum == "cores" else look.maximum
        if top is None:
            return w.BoundedIntText(value=start, min=low, max=2**31 - 1, **fit)
        return w.IntSlider(value=start, min=low, max=top, **fit)
    if s.choices:
        return w.Dropdown(options=list(s.choices), value=value or s.choices[0], **fit)
    return w.Text(value=str(value or ""), **fit)


def build(w: Any, prof: EpochProfile) -> dict[str, Any]:
    """One control per setting, in SETTINGS order, set to the baseline's value;
    each fills its grid column (width auto), description as wide as its text."""
    cores = int(prof.environment.get("cpu_count") or os.cpu_count() or 1)
    out = {}
    for s in SETTINGS:
        look = LOOKS.get(s.name, Look())
        fit = {"description": look.description or s.name, "style": FIT, "layout": {"width": "auto"}}
        if look.build is not None:
            out[s.name] = look.build(w, s, prof, fit)
        else:
            out[s.name] = _by_kind(w, s, look, prof.config.get(s.name), cores, fit)
    return out


def chosen(inputs: dict[str, Any], unavailable: set[str], cfg: Values) -> Values:
    """The what-if the controls describe: a control that is unavailable, does
    not apply or is an empty text box is left out (the baseline's value stays)."""
    values = {name: c.value for name, c in inputs.items()}
    out = {}
    for name, value in values.items():
        applies = LOOKS.get(name, Look()).applies
        if name in unavailable or value == "" or (applies and not applies(values, cfg)):
            continue
        out[name] = value
    return out
