"""What ran where: the training loader's settings and the machine."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import Any

import torch

from epochmagic.model.vocabulary import LOADER_KEYS


def loader_config(loader: Any) -> dict[str, Any]:
    """Batch size, workers and loader options of a DataLoader, as it runs: the
    loader settings of ``epochmagic/model/vocabulary.py`` (``LOADER_KEYS``)."""
    if loader is None:
        return dict.fromkeys(LOADER_KEYS)
    batch_size = getattr(loader, "batch_size", None)
    if batch_size is None:  # a custom batch_sampler sets batch_size to None
        batch_size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    workers = int(getattr(loader, "num_workers", 0) or 0)
    return {
        "batch_size": batch_size,
        "workers": workers,
        "pin_memory": bool(getattr(loader, "pin_memory", False)),
        "persistent_workers": bool(getattr(loader, "persistent_workers", False)),
        "prefetch_factor": getattr(loader, "prefetch_factor", None) if workers else None,
    }


def optimizer_fused(optimizers: list[Any]) -> bool:
    return any(bool(g.get("fused")) for opt in optimizers for g in getattr(opt, "param_groups", []))


def model_device(modules: list[Any]) -> str:
    for m in modules:
        try:
            p = next(m.parameters())
        except (StopIteration, AttributeError, TypeError):
            continue
        return str(p.device)
    return "cpu"


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": device,
        "device_name": _cpu_name(),
        "cpu_name": _cpu_name(),
        "cpu_count": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "gpu_memory_bytes": None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        env["device_name"] = props.name
        env["gpu_memory_bytes"] = int(props.total_memory)
    return env
