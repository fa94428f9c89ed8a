"""Random number generator states, saved and put back in one place.

Whatever epochmagic runs on the user's behalf (a what-if, a FLOP count on fake
inputs, a timed sample of the dataset) must not move the user's random
streams: Python's, torch's CPU and CUDA generators, and NumPy's when it is
imported.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    """Every generator's state (CUDA's only once CUDA is initialised: reading
    it would initialise it)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block, then put every generator back as it was."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
