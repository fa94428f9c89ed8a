"""Rebuilding a training DataLoader under another setting (docs/design.md §5.1).

The user's loader is never modified: a what-if iterates a new DataLoader over
the same dataset, sampler kind, collate_fn and options, with a *copy* of the
loader's generator so the user's generator does not advance.
"""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from epochmagic.capture.patching import Patches
from epochmagic.capture.rng import preserved_rng


class Unsupported(Exception):
    """A what-if this cell, loader or device cannot run; the message says why."""


def copy_generator(g: torch.Generator | None) -> torch.Generator | None:
    if g is None:
        return None
    new = torch.Generator(device=g.device)
    new.set_state(g.get_state())
    return new


def start_method(loader: Any) -> str:
    ctx = getattr(loader, "multiprocessing_context", None)
    if ctx is not None:
        return str(ctx.get_start_method() if hasattr(ctx, "get_start_method") else ctx)
    method = multiprocessing.get_start_method(allow_none=True)
    if method:
        return method
    if sys.platform.startswith("linux") and sys.version_info < (3, 14):
        return "fork"
    return "spawn" if not sys.platform.startswith("linux") else "forkserver"


def check_workers(loader: Any, workers: int) -> None:
    """Worker processes need what they run to reach them: under spawn or
    forkserver that means pickling, which a notebook-defined class fails."""
    if workers == 0:
        return
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) and workers > 1 and not _shards_itself(dataset):
        raise Unsupported(
            f"{workers} workers over an IterableDataset repeat every batch unless the dataset "
            "splits its stream with torch.utils.data.get_worker_info(); this one does not"
        )
    method = start_method(loader)
    if method == "fork":
        return
    for what, obj in (
        ("dataset", dataset),
        ("collate_fn", loader.collate_fn),
        ("worker_init_fn", loader.worker_init_fn),
    ):
        if obj is None:
            continue
        if (
            getattr(type(obj), "__module__", "") == "__main__"
            or getattr(obj, "__module__", "") == "__main__"
        ):
            raise Unsupported(
                f"workers cannot start: the {what} is defined in the notebook, and worker "
                f"processes started with {method!r} cannot import it; move it to a .py module "
                "or use the 'fork' start method"
            )
        try:
            pickle.dumps(obj)
        except Exception as e:  # noqa: BLE001 (any pickling failure means the same)
            raise Unsupported(
                f"workers cannot start: the {what} cannot be pickled for {method!r} worker "
                f"processes ({type(e).__name__}: {e})"
            ) from None


def _shards_itself(dataset: Any) -> bool:
    try:
        source = inspect.getsource(type(dataset))
    except (OSError, TypeError):
        return False
    return "get_worker_info" in source


def rebuild(
    loader: Any,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A new DataLoader like ``loader`` with the given settings changed."""
    dataset = loader.dataset
    num_workers = int(loader.num_workers if workers is None else workers)
    check_workers(loader, num_workers)
    custom_batches = loader.batch_size is None and loader.batch_sampler is not None
    current_bs = (
        loader.batch_size
        if not custom_batches
        else getattr(loader.batch_sampler, "batch_size", None)
    )
    if custom_batches and batch_size is not None and batch_size != current_bs:
        raise Unsupported(
            f"the loader's custom batch_sampler ({type(loader.batch_sampler).__name__}) fixes "
            "the batch size; only workers and loader options can change"
        )
    persistent = bool(
        loader.persistent_workers if persistent_workers is None else persistent_workers
    )
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": bool(loader.pin_memory if pin_memory is None else pin_memory),
        "timeout": loader.timeout if num_workers else 0,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context if num_workers else None,
        "generator": copy_generator(loader.generator),
        "persistent_workers": persistent and num_workers > 0,
        "pin_memory_device": getattr(loader, "pin_memory_device", ""),
        "in_order": getattr(loader, "in_order", True),
    }
    if num_workers:
        default = loader.prefetch_factor if loader.num_workers else 2
        kwargs["prefetch_factor"] = prefetch_factor if prefetch_factor is not None else default
    if custom_batches:
        kwargs["batch_sampler"] = loader.batch_sampler  # batch_size must stay at its default
    elif loader.batch_size is None:  # no batching at all: samples go through as they are
        kwargs.update(batch_size=None, sampler=_sampler(loader, dataset))
    else:
        kwargs.update(
            batch_size=int(batch_size if batch_size is not None else loader.batch_size),
            drop_last=loader.drop_last,
        )
        if not isinstance(dataset, IterableDataset):
            kwargs["sampler"] = _sampler(loader, dataset)
    return DataLoader(dataset, **kwargs)


def _sampler(loader: Any, dataset: Any) -> Any:
    """A fresh sampler of the same kind: a DataLoader does not store
    ``shuffle``; a RandomSampler says it was on."""
    s = loader.sampler
    if isinstance(dataset, IterableDataset):
        return None
    if type(s) is RandomSampler:
        return RandomSampler(
            dataset,
            replacement=s.replacement,
            num_samples=s._num_samples,
            generator=copy_generator(s.generator),
        )
    if type(s) is SequentialSampler:
        return SequentialSampler(dataset)
    return s  # a custom sampler is shared; its generator is restored afterwards


def shut_down(iterators: Sequence[Any], keep: Sequence[Any] = ()) -> None:
    """Stop the worker processes of DataLoader iterators an auxiliary run
    started, except those a loader still holds (``keep``)."""
    kept = {id(k) for k in keep if k is not None}
    for it in iterators:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None and id(it) not in kept:
            shutdown()


def batch_size_of(loader: Any) -> int | None:
    if loader.batch_size is not None:
        return int(loader.batch_size)
    return getattr(loader.batch_sampler, "batch_size", None)


def loading_cost(loader: Any, max_seconds: float = 0.5) -> dict[str, float] | None:
    """Time the dataset's own ``__getitem__`` and the collate_fn in this process.

    Worker processes hide this cost behind the data wait, and the wait alone
    cannot separate it from compute; RNG states are put back afterwards (a
    random augmentation draws from them).
    """
    dataset = loader.dataset
    bs = batch_size_of(loader) or 1
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        return None
    try:
        n = len(dataset)
    except TypeError:
        return None
    if n == 0:
        return None
    try:
        with preserved_rng():
            samples: list[Any] = []
            t0 = time.perf_counter()
            for i in range(min(n, bs * 4)):
                samples.append(dataset[i])
                if time.perf_counter() - t0 > max_seconds and len(samples) >= 2:
                    break
            fetch = time.perf_counter() - t0
            batch = samples[:bs]
            t1 = time.perf_counter()
            if loader.collate_fn is not None and loader.batch_size is not None:
                loader.collate_fn(batch)
            collate = time.perf_counter() - t1
    except Exception:  # noqa: BLE001 (a dataset that fails here fails in the loop too)
        return None
    per_sample = fetch / len(samples)
    collate_per_sample = collate / max(1, len(batch))
    cost = {
        "per_sample_s": per_sample,
        "collate_s": collate_per_sample * bs,
        "per_batch_s": per_sample * bs + collate_per_sample * bs,
        "samples_timed": float(len(samples)),
    }
    transform = _transform_share(dataset, len(samples), per_sample)
    if transform is not None:
        cost["transform_s"] = transform
    return cost


def _transform_share(dataset: Any, n: int, per_sample: float) -> float | None:
    """Seconds per sample spent in the dataset's ``transform``: the same
    samples fetched once more with it switched off (and put back)."""
    transform = getattr(dataset, "transform", None)
    if transform is None or not callable(transform):
        return None
    try:
        with preserved_rng(), Patches() as patches:
            patches.swap(dataset, "transform", None)
            t0 = time.perf_counter()
            for i in range(n):
                dataset[i]
            raw = (time.perf_counter() - t0) / n
    except Exception:  # noqa: BLE001 (a dataset that needs its transform: no split)
        return None
    return max(0.0, per_sample - raw)


def loading_cost_in_worker(loader: Any, timeout: float = 10.0) -> dict[str, float] | None:
    """``loading_cost`` measured inside a forked process set up like a
    DataLoader worker (one torch thread): where the workers' time really goes.
    Only with the fork start method; elsewhere None."""
    import multiprocessing as mp

    if start_method(loader) != "fork":
        return None
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def work() -> None:
        torch.set_num_threads(1)  # changes only this forked child, which exits; noqa: patching
        child.send(loading_cost(loader, max_seconds=0.2))

    proc = ctx.Process(target=work, daemon=True)
    try:
        proc.start()
        if parent.poll(timeout):
            result = parent.recv()
            return result if isinstance(result, dict) else None
        return None
    except (OSError, EOFError):
        return None
    finally:
        proc.join(timeout=1)
        if proc.is_alive():
            proc.kill()
        parent.close()
        child.close()


def worker_batch_time(loader: Any, batches: int = 30, max_seconds: float = 0.6) -> float | None:
    """Seconds per batch that one worker process delivers, measured.

    A worker is not free: fork, pickling through shared memory and the cores it
    shares with the main process made one worker 1.2-1.5x *slower* per batch
    than loading in the main process on the 2-core machine this was written on,
    so the worker model is calibrated on the user's own dataset rather than
    assumed. Start-up (the first batches) is left out; RNG states and the
    loader's generator are untouched (a rebuilt loader with a copied generator).
    """
    try:
        check_workers(loader, 1)
        probe = rebuild(loader, workers=1, persistent_workers=False)
    except Unsupported:
        return None
    it = None
    with preserved_rng():
        try:
            it = iter(probe)
            next(it)
            next(it)  # warm: fork and the first prefetch are start-up, not throughput
            t0 = time.perf_counter()
            n = 0
            for _ in range(batches):
                next(it)
                n += 1
                if time.perf_counter() - t0 > max_seconds:
                    break
            return (time.perf_counter() - t0) / n
        except Exception:  # noqa: BLE001 (StopIteration on a short epoch, a failing worker)
            return None
        finally:
            shut_down([it])
