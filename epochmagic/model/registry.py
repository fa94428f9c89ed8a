"""Where ``EpochProfile``'s methods find the layers above the model.

``EpochProfile`` is plain data in the lowest layer, yet ``prof.text()``,
``prof.to_html()``, ``prof.rerun()`` and the dashboard need the report and
what-if layers. Importing them from here would make a cycle, so the package
root (``epochmagic/__init__.py``) fills this registry at import and the model
calls through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_PROVIDED: dict[str, Callable[..., Any]] = {}
NAMES = ("text", "html_report", "html_page", "breakdown_png", "dashboard", "chrome_trace")


def provide(**functions: Callable[..., Any]) -> None:
    """Register implementations by name (the package root does this once)."""
    unknown = set(functions) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown registry names: {', '.join(sorted(unknown))}")
    _PROVIDED.update(functions)


def get(name: str) -> Callable[..., Any]:
    try:
        return _PROVIDED[name]
    except KeyError:
        raise RuntimeError(
            f"epochmagic's {name!r} is not registered: import epochmagic (the package), "
            "not only epochmagic.model"
        ) from None
