"""What the probes read off the values they see: a batch's samples, tokens
and labels, a forward's first tensor and input shapes, the autocast in force,
a copy's ``non_blocking`` flag. Pure functions of their arguments."""

from __future__ import annotations

from typing import Any

import torch


def batch_info(batch: Any) -> tuple[int, int | None, Any]:
    """(samples, tokens or None, labels tensor or None) of a batch."""
    first, second = leading_tensors(batch)
    if first is None:
        return 0, None, None
    samples = int(first.shape[0]) if first.dim() > 0 else 1
    tokens = None
    if first.dim() >= 2 and not first.is_floating_point() and not first.is_complex():
        tokens = int(first.numel())
    labels = None
    if second is not None and second.dim() == 1 and not second.is_floating_point():
        labels = second
    return samples, tokens, labels


def leading_tensors(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        values = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        for key in ("input_ids", "input", "inputs", "x", "image", "images", "pixel_values"):
            if isinstance(batch.get(key), torch.Tensor):
                first = batch[key]
                label = batch.get("labels", batch.get("label", batch.get("y")))
                return first, label if isinstance(label, torch.Tensor) else None
        return (values[0] if values else None), (values[1] if len(values) > 1 else None)
    if isinstance(batch, (list, tuple)):
        tensors = [b for b in batch if isinstance(b, torch.Tensor)]
        if tensors:
            return tensors[0], (tensors[1] if len(tensors) > 1 else None)
        for item in batch:
            first, _ = leading_tensors(item)
            if first is not None:
                return first, None
    return None, None


def first_tensor_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    for a in kwargs.values():
        if isinstance(a, torch.Tensor):
            return a
    return None


def non_blocking(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """The ``non_blocking`` flag of a ``Tensor.to(...)`` / ``.cuda(...)`` call:
    a keyword, or the first positional bool (``to(device, dtype, True)``,
    ``cuda(0, True)``)."""
    if "non_blocking" in kwargs:
        return bool(kwargs["non_blocking"])
    return next((a for a in args if isinstance(a, bool)), False)


def signature(values: tuple[Any, ...]) -> list[Any]:
    return [
        (tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else v for v in values
    ]


def autocast_precision(first: Any) -> str:
    device = first.device.type if first is not None else "cpu"
    for dev in (device, "cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(dev):
                dtype = torch.get_autocast_dtype(dev)
                return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
        except (RuntimeError, TypeError):
            continue
    return "fp32"
