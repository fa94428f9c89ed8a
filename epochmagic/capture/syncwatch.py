"""Synchronising calls, found through the warnings torch's sync debug mode
raises (``torch.cuda.set_sync_debug_mode("warn")``), reported at the user's
line.

The warning is delivered when the synchronising call returns, from inside
torch (or the warnings machinery): the line reported is the first frame
outside torch, epochmagic and :mod:`warnings`.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from epochmagic.capture.patching import Patches

SYNC_MESSAGE = "called a synchronizing CUDA operation"


def route_sync_warnings(patches: Patches, on_sync: Callable[[str, int], None]) -> None:
    """Until ``patches`` closes, call ``on_sync(filename, lineno)`` for every
    sync warning the current thread raises (an "always" filter: every sync
    counts, not once per line) and show none of them; other warnings are
    shown as before."""
    main = threading.get_ident()
    shown = warnings.showwarning

    def showwarning(
        message: Any,
        category: Any,
        filename: str,
        lineno: int,
        file: Any = None,
        line: Any = None,
    ) -> None:
        if SYNC_MESSAGE in str(message):
            if threading.get_ident() == main:
                on_sync(*user_frame(filename, lineno))
            return
        shown(message, category, filename, lineno, file, line)

    patches.warning_filter("always", SYNC_MESSAGE)
    patches.replace(warnings, "showwarning", showwarning)


def user_frame(filename: str, lineno: int) -> tuple[str, int]:
    """The caller outside torch and epochmagic: a sync inside ``print(t)`` is
    reported at the user's ``print``, not in torch's tensor formatting."""
    if not filename.startswith(_internal()):
        return filename, lineno
    found = caller_outside(sys._getframe(1))
    return found if found[0] else (filename, lineno)


def caller_outside(frame: Any) -> tuple[str, int]:
    """The first frame from ``frame`` outwards that is not torch's, ours or
    the warnings machinery's: the user's line."""
    skip = _internal()
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    if frame is None:
        return "", 0
    return frame.f_code.co_filename, frame.f_lineno


def _internal() -> tuple[str, ...]:
    import torch

    return (torch.__path__[0], __file__.rsplit("/", 1)[0], warnings.__file__)
