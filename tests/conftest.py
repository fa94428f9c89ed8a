"""Shared fixtures: a real IPython shell and the leak check every test runs under."""

from __future__ import annotations

import signal
import sys
import threading
import warnings
from typing import Any

import pytest
import torch
import torch.optim.optimizer as optim_mod
from torch.nn.modules import module as module_mod

from epochmagic.capture import patching

# One intra-op thread: tiny test models on 2 shared cores otherwise spend most
# of their time in OpenMP spin-waits whenever another process is busy.
torch.set_num_threads(1)


def _module_classes() -> list[type]:
    out, todo = [], [torch.nn.Module]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def instrumentation_state(targets: list[tuple[Any, str]]) -> dict[str, Any]:
    """Everything epochmagic may install, as comparable values."""
    return {
        # the one mechanism that patches anything says what is installed now,
        # and which classes and modules it ever changed (their values compared)
        "installed": patching.installed(),
        "patched": [(owner, name, vars(owner).get(name)) for owner, name in targets],
        "global_module_hooks": (
            len(module_mod._global_forward_pre_hooks),
            len(module_mod._global_forward_hooks),
            len(module_mod._global_forward_hooks_always_called),
            len(module_mod._global_backward_hooks),
        ),
        "optimizer_hooks": (
            len(optim_mod._global_optimizer_pre_hooks),
            len(optim_mod._global_optimizer_post_hooks),
        ),
        "call_overrides": sorted(
            f"{c.__module__}.{c.__qualname__}"
            for c in _module_classes()
            if getattr(vars(c).get("__call__"), "__module__", "").startswith("epochmagic")
        ),
        "dynamo": _dynamo_state(),
        # patched until the cell first compiles; a library may wrap it on import
        "torch.compile is ours": _ours(torch.compile),
        "trace": sys.gettrace(),
        # the line sampler's timer signal: a real-time signal's handler (and SIGALRM,
        # which belongs to the user) must be what it was
        "signal handlers": _signal_handlers(),
        "showwarning": warnings.showwarning,  # syncs are found through torch's warnings
        "our_warning_filters": [
            f
            for f in warnings.filters
            if f[1] is not None
            and ("torch.compile" in f[1].pattern or "synchronizing CUDA" in f[1].pattern)
        ],
    }


def _signal_handlers() -> dict[int, Any]:
    sigs = [signal.SIGALRM]
    if hasattr(signal, "SIGRTMIN"):
        sigs += range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
    return {int(s): signal.getsignal(s) for s in sigs}


def _ours(fn: Any) -> bool:
    return getattr(fn, "__module__", "").startswith("epochmagic") or "CompileWatch" in getattr(
        fn, "__qualname__", ""
    )


def _dynamo_state() -> tuple[bool, int]:
    """Whether dynamo's eval-frame setter is ours, and how many of our compile
    callbacks are registered (nothing when dynamo was never imported)."""
    if "torch._dynamo.callback" not in sys.modules:
        return (False, 0)
    from torch._dynamo import eval_frame
    from torch._dynamo.callback import callback_handler

    callbacks = [*callback_handler.start_callbacks, *callback_handler.end_callbacks]
    return (
        _ours(getattr(eval_frame, "_maybe_set_eval_frame", None)),
        sum(1 for c in callbacks if _ours(c)),
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``fork`` state that they need the fork start method (they
    ask for it explicitly, so a different default, such as forkserver on
    Linux from Python 3.14, does not matter); where fork does not exist
    (macOS may lack it safely, Windows has none) they skip, saying why."""
    import multiprocessing

    if "fork" in multiprocessing.get_all_start_methods():
        return
    skip = pytest.mark.skip(reason="needs the fork start method, which this platform lacks")
    for item in items:
        if "fork" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_leftover_instrumentation():
    """Fail any test that leaves a hook, patch or tracer installed."""
    targets = patching.global_targets()  # a target first patched in the test: see "installed"
    before = instrumentation_state(targets)
    yield
    after = instrumentation_state(targets)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"epochmagic left instrumentation installed: {changed}"


@pytest.fixture(scope="session")
def shell():
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_cell("%load_ext epochmagic", store_history=True)
    yield ip
    # compiled code keeps names of its own in the namespace and deletes them
    # when it is freed: free it while the namespace is still there
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
        import gc

        gc.collect()
        # what is still alive at exit would otherwise delete its names from a
        # namespace IPython has already emptied (KeyError noise)
        torch._dynamo.utils.CleanupManager.instance.clear()


@pytest.fixture
def ip(shell):
    """The shared shell with a clean-ish namespace for each test."""
    keep = set(shell.user_ns)
    torch.manual_seed(0)
    yield shell
    for name in list(shell.user_ns):
        # dynamo keeps names of its own in the namespace of compiled code and
        # deletes them itself when that code is freed
        if name not in keep and not name.startswith("__"):
            del shell.user_ns[name]


def run(ip, source: str, *, ok: bool = True):
    """Run a cell; by default assert that it succeeded."""
    result = ip.run_cell(source, store_history=True)
    if ok:
        assert result.success, f"cell failed: {result.error_in_exec or result.error_before_exec}"
    return result


def thread_count() -> int:
    return threading.active_count()
