"""What a what-if changes for its run, and how each change is undone: the
training loader swapped for a rebuilt one, autocast around root forwards,
fused copies of the optimizers. The user's objects are never modified."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from epochmagic.capture import loaders
from epochmagic.capture.loaders import Unsupported
from epochmagic.capture.patching import Patches
from epochmagic.capture.probes import loader_keys
from epochmagic.model import vocabulary
from epochmagic.model.vocabulary import PRECISIONS

FUSABLE: tuple[type[torch.optim.Optimizer], ...] = tuple(
    getattr(torch.optim, name) for name in vocabulary.FUSABLE
)


def substitution(original: Any, changes: dict[str, Any]) -> tuple[Callable[[Any], Any], list[Any]]:
    """A probe hook that swaps the training loader (and any loader over its
    dataset, e.g. skorch's fresh one each epoch) for a rebuilt one."""
    template = loaders.rebuild(original, **changes)
    keys = loader_keys(original)
    cache: dict[int, Any] = {id(original): template}
    rebuilt = [template]

    def substitute(loader: Any) -> Any:
        if any(loader is r for r in rebuilt) or not (loader_keys(loader) & keys):
            return None
        if id(loader) not in cache:
            cache[id(loader)] = loaders.rebuild(loader, **changes)
            rebuilt.append(cache[id(loader)])
        return cache[id(loader)]

    return substitute, rebuilt


def autocast_factory(want: str, have: str, device: str) -> Callable[[], Any] | None:
    """An autocast context for root forwards, or None when nothing changes."""
    if want == have:
        return None
    if want == "fp32":
        return lambda: torch.autocast(device, enabled=False)
    dtype = torch.bfloat16 if want == "bf16" else torch.float16
    check_precision(device, dtype, want)
    return lambda: torch.autocast(device, dtype=dtype)


def scaler_note(precision: str | None, device: str, scaler: bool | None) -> str | None:
    """What an fp16 run on CUDA did about gradient scaling. ``scaler``: the
    cell's GradScaler stepped enabled (True), disabled (False), none stepped
    (None). A what-if never adds one: it times the cell as written."""
    if precision != "fp16" or not device.startswith("cuda"):
        return None
    if scaler:
        return "fp16 with the cell's own GradScaler"
    which = "the cell's GradScaler disabled" if scaler is False else "no GradScaler in the cell"
    return f"fp16 with {which}: losses may underflow or overflow, the timing holds"


def check_precision(device: str, dtype: torch.dtype, name: str) -> None:
    """Raise Unsupported when autocast to ``dtype`` cannot run on ``device``."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise Unsupported(f"{name}: CUDA is not available")
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise Unsupported(f"{name}: {torch.cuda.get_device_name()} has no bfloat16 support")
        return
    try:
        with torch.autocast(device, dtype=dtype):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, ValueError) as e:
        raise Unsupported(f"{name}: autocast on {device} cannot run it ({e})") from None


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fused_optimizers(
    patches: Patches, ns: dict[str, Any], names: set[str], notes: list[str]
) -> None:
    """Run with fused copies of the namespace's optimizers (the user's are not
    touched; the run's snapshot puts the names back) and, until ``patches``
    closes, with fused=True for optimizers the cell creates."""
    for name in names:
        copy = fused_copy(ns[name])
        if copy is not None:
            ns[name] = copy
        else:
            notes.append(f"{type(ns[name]).__name__} has no fused implementation: {name} unchanged")
    for cls in FUSABLE:
        patches.replace(cls, "__init__", _fused_init(cls.__init__))


def _fused_init(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` with fused=True unless the call says otherwise."""

    def __init__(self: Any, params: Any, *args: Any, **kwargs: Any) -> None:
        if "fused" not in kwargs and not args:
            kwargs["fused"] = True
            kwargs.setdefault("foreach", None)
        init(self, params, *args, **kwargs)

    return __init__


def fused_copy(opt: Any) -> Any:
    """A fused optimizer with ``opt``'s hyper-parameters and state, or None."""
    if type(opt) not in FUSABLE:
        return None
    groups = []
    for g in opt.param_groups:
        g2 = dict(g)
        g2["params"] = list(g["params"])
        g2["fused"], g2["foreach"] = True, None
        groups.append(g2)
    defaults = {k: v for k, v in opt.defaults.items() if k not in ("fused", "foreach")}
    try:
        new = type(opt)(groups, **defaults, fused=True)
        new.load_state_dict(opt.state_dict())
    except (RuntimeError, ValueError, TypeError):
        return None
    for g in new.param_groups:  # load_state_dict turns fused off again
        g["fused"], g["foreach"] = True, None
    for p, st in new.state.items():
        if "step" in st and torch.is_tensor(st["step"]):
            st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
    return new


__all__ = [
    "FUSABLE",
    "PRECISIONS",
    "Unsupported",
    "autocast_factory",
    "available_memory",
    "check_precision",
    "fused_copy",
    "fused_optimizers",
    "scaler_note",
    "substitution",
]
