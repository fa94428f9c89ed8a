"""Facts about the model, optimizer, data and machine that the findings cite.

Collected once after the measured run, outside the timed region, without a
training step on the user's model: FLOPs come from one forward with grad
enabled and one ``torch.autograd.grad`` over the trainable parameters (never
``.grad``), in eval mode, on random inputs shaped like the first training
batch, with the RNG and train/eval flags put back.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from epochmagic.analysis import gpu as gpumod
from epochmagic.capture import environment as envmod
from epochmagic.capture import loaders
from epochmagic.capture.rng import preserved_rng
from epochmagic.model.thresholds import threshold

TOP_LAYERS = 5  # the largest layers the evidence lists (a display count)


def collect(run: Any, loader: Any, data_share: float) -> dict[str, Any]:
    probes, tl = run.probes, run.timeline
    trained = probes.trained_param_ids()
    roots = [m for m in probes.roots.values() if any(id(p) in trained for p in m.parameters())]
    ev: dict[str, Any] = {
        "params": sum(p.numel() for m in roots for p in m.parameters()),
        "trainable_params": sum(
            p.numel() for m in roots for p in m.parameters() if p.requires_grad
        ),
        "layers": _layers(roots),
        "optimizers": [_optimizer(o) for o in probes.optimizers.values()],
        "labels": _labels(tl.labels),
        "loading": _loading(loader, data_share),
        "cpu_bf16": _cpu_has_bf16(),
        "cuda_available": torch.cuda.is_available(),
        "flops_batch": _batch_of(probes.first_call),
        "param_dtype": _param_dtype(roots),
        "grad_scaler": (any(probes.scalers.values()) if probes.scalers else None),
        "peak_flops": None,
        "transform": type(getattr(getattr(loader, "dataset", None), "transform", None)).__name__
        if getattr(getattr(loader, "dataset", None), "transform", None) is not None
        else None,
    }
    counted = _flops(probes.first_call)
    ev["flops_forward"], ev["flops_backward"] = counted or (None, None)
    ev["flops_per_step"] = sum(counted) if counted else None
    if probes.module_spans:
        ev["module_forward_s"] = _module_times(probes, roots)
        ev["module_backward_s"] = _backward_times(probes, roots)
    if ev["flops_per_step"] and envmod.model_device(roots) == "cpu":  # GPUs: gpu.utilisation
        ev["peak_flops"] = peak_flops()  # its own generator: the user's streams stay
    return ev


def _loading(loader: Any, data_share: float) -> dict[str, float] | None:
    """The dataset's own time per sample and the collate time per batch, in
    this process; with workers, also a batch's time inside one worker."""
    if loader is None or data_share < threshold("loading_timed_share"):
        return None
    cost = loaders.loading_cost(loader, max_seconds=0.2)
    if cost is not None:  # the worker suggestion is predicted from it
        in_worker = loaders.worker_batch_time(loader)
        if in_worker is not None:
            cost["worker_batch_s"] = in_worker
        if int(getattr(loader, "num_workers", 0) or 0) > 0:
            inside = loaders.loading_cost_in_worker(loader)
            if inside:
                cost.update(
                    {
                        f"worker_{k}": v
                        for k, v in inside.items()
                        if k in ("per_sample_s", "collate_s", "transform_s")
                    }
                )
    return cost


def peak_flops(device: str = "cpu", seconds: float = 0.1) -> float | None:
    """FLOP/s ``device`` reaches on a 512x512 fp32 matmul (the one matmul
    probe, ``analysis.gpu.matmul_flops``: kept once measured, a failure tried
    again), the yardstick for the model's achieved FLOP/s. The device is named
    by the caller: whether CUDA exists does not change what is probed."""
    return gpumod.matmul_flops(device, torch.float32, 512, seconds)


def _layer_names(roots: list[Any]) -> dict[int, str]:
    """``id(module)`` -> ``"name (Type)"`` for every layer of the trained models."""
    return {
        id(m): f"{n or type(root).__name__} ({type(m).__name__})"
        for root in roots
        for n, m in root.named_modules()
    }


def _module_times(probes: Any, roots: list[Any]) -> list[tuple[str, float, int]]:
    """Leaf layers by forward time (inclusive times of containers would
    double-count their children)."""
    names = _layer_names(roots)
    totals: dict[int, list[float]] = {}
    for t0, t1, key in probes.module_spans:
        acc = totals.setdefault(key, [0.0, 0])
        acc[0] += t1 - t0
        acc[1] += 1
    rows = [
        (names.get(key, type(m).__name__), float(totals[key][0]), int(totals[key][1]))
        for key, m in probes.module_objects.items()
        if key in totals and not any(True for _ in m.children())
    ]
    return sorted(rows, key=lambda r: -r[1])[:10]


def _backward_times(probes: Any, roots: list[Any]) -> list[tuple[str, float, int]]:
    """A layer's backward runs from the moment the gradient reaches its output
    until it reaches the output of the layer before it (autograd walks the
    layers in reverse), or until backward() returns for the first layer."""
    from epochmagic.capture import recorder as r

    ends = sorted(e[0] for e in probes.rec.events if e[1] == r.BWD_EXIT)
    marks = sorted(probes.grad_marks)
    totals: dict[int, list[float]] = {}
    for i, (t, key) in enumerate(marks):
        j = bisect.bisect_left(ends, t)
        end = ends[j] if j < len(ends) else t
        if i + 1 < len(marks) and marks[i + 1][0] <= end:
            end = marks[i + 1][0]
        acc = totals.setdefault(key, [0.0, 0])
        acc[0] += end - t
        acc[1] += 1
    names = _layer_names(roots)
    rows = [(names.get(k, "?"), float(v[0]), int(v[1])) for k, v in totals.items()]
    return sorted(rows, key=lambda row: -row[1])[:10]


def _layers(roots: list[Any]) -> list[tuple[str, int]]:
    names = _layer_names(roots)
    sizes: list[tuple[str, int]] = []
    for root in roots:
        for m in root.modules():
            own = sum(p.numel() for p in m.parameters(recurse=False))
            if own:
                sizes.append((names[id(m)], own))
    return sorted(sizes, key=lambda x: -x[1])[:TOP_LAYERS]


def _optimizer(opt: Any) -> dict[str, Any]:
    group = opt.param_groups[0] if opt.param_groups else {}
    return {
        "type": type(opt).__name__,
        "fused": bool(group.get("fused")),
        "foreach": group.get("foreach"),
        "params": sum(p.numel() for g in opt.param_groups for p in g["params"]),
    }


def _labels(labels: list[Any]) -> dict[str, int] | None:
    counts: dict[int, int] = {}
    for y in labels:
        if y is None or y.numel() == 0 or y.min() < 0:
            return None
        for k, v in enumerate(torch.bincount(y.detach().flatten().cpu()).tolist()):
            if v:
                counts[k] = counts.get(k, 0) + v
    if len(counts) < 2 or len(counts) > threshold("label_classes_max"):
        return None
    return {str(k): v for k, v in sorted(counts.items())}


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _flops(first_call: Any) -> tuple[float, float] | None:
    """(forward, backward) FLOPs of one training step on the first batch's shape,
    counted as it runs: grad enabled, so a ``no_grad`` region or frozen layers
    get no backward, and ``autograd.grad`` over the trainable parameters, which
    leaves their ``.grad`` alone. In eval mode (no running-stat updates, no
    dropout); any failure means no count."""
    if first_call is None:
        return None
    module, args, kwargs, names = first_call
    module = _unwrap(module)
    flags = [(m, m.training) for m in module.modules()]
    try:
        with preserved_rng():  # random inputs (on the GPU too) must not move the user's streams
            return _count(module, args, kwargs, names)
    except Exception:  # noqa: BLE001 (an input we cannot fake: no FLOP count, no harm)
        return None
    finally:
        for m, training in flags:
            m.training = training


def _count(module: Any, args: Any, kwargs: Any, names: Any) -> tuple[float, float]:
    """One eval-mode forward and ``autograd.grad`` under the FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    fake_args = [_fake(a) for a in args]
    fake_kwargs = dict(zip(names, [_fake(v) for v in kwargs]))
    module.eval()
    params = [p for p in module.parameters() if p.requires_grad]
    # the counter's global module hooks make torch warn about compiled submodules
    with warnings.catch_warnings(), _eager(), torch.enable_grad():
        warnings.simplefilter("ignore")
        counter = FlopCounterMode(display=False)
        with counter:
            out = module(*fake_args, **fake_kwargs)
            forward = float(counter.get_total_flops())
            outputs = _grad_outputs(out, set())
            del out
            if outputs and params:
                scalar = outputs[0].sum().float()
                for t in outputs[1:]:  # outputs may sit on several devices
                    scalar = scalar + t.sum().float().to(scalar.device)
                del outputs
                torch.autograd.grad(scalar, params, allow_unused=True)
            backward = float(counter.get_total_flops()) - forward
    return forward, backward


def _unwrap(module: Any) -> Any:
    """The module that does the work: a ``torch.compile``'d module called in
    eval mode would recompile, and DDP/DataParallel wrappers would communicate."""
    for _ in range(8):
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module) and type(module).__name__ in (
            "DistributedDataParallel",
            "DataParallel",
        ):
            inner = getattr(module, "module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        module = inner
    return module


def _eager() -> Any:
    """Compiled submodules run eagerly: compiling them for the count would cost
    a recompile and change what the user's model has cached."""
    import contextlib
    import sys

    stance = getattr(torch.compiler, "set_stance", None)
    # nothing can be compiled before dynamo is imported, and importing it costs ~1 s
    if stance is None or "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    try:
        return stance("force_eager")
    except Exception:  # noqa: BLE001 (an older torch: count as it comes)
        return contextlib.nullcontext()


def _grad_outputs(out: Any, seen: set[int], depth: int = 0) -> list[torch.Tensor]:
    """The floating-point tensors that need a gradient in a forward's output:
    tensors, tuples, lists, dicts and objects holding tensors (ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.requires_grad and out.is_floating_point() else []
    if depth > 6 or id(out) in seen or isinstance(out, (str, bytes, torch.nn.Module)):
        return []
    seen.add(id(out))
    if isinstance(out, Mapping):
        items: Any = out.values()
    elif isinstance(out, (list, tuple)):
        items = out
    elif hasattr(out, "__dict__") and not isinstance(out, type):
        items = vars(out).values()
    else:
        return []
    found: dict[int, torch.Tensor] = {}
    for item in items:
        for t in _grad_outputs(item, seen, depth + 1):
            found.setdefault(id(t), t)
    return list(found.values())


DTYPE_NAMES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
}


def _param_dtype(roots: list[Any]) -> str | None:
    """The dtype most of the model's floating-point weights are in: without
    autocast, the one its matmuls ran in (``model.to(torch.bfloat16)``)."""
    sizes: dict[torch.dtype, int] = {}
    seen: set[int] = set()
    for root in roots:
        for p in root.parameters():
            if id(p) not in seen and p.is_floating_point():
                seen.add(id(p))
                sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    if not sizes:
        return None
    top = max(sizes, key=lambda d: sizes[d])
    return DTYPE_NAMES.get(top, str(top).replace("torch.", ""))


def _batch_of(first_call: Any) -> int | None:
    """The leading dimension of the first training forward's first tensor."""
    if first_call is None:
        return None
    for spec in (*first_call[1], *first_call[2]):
        if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[1], torch.dtype):
            return int(spec[0][0]) if spec[0] else None
    return None


def _fake(spec: Any) -> Any:
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[1], torch.dtype):
        shape, dtype, device = spec
        if dtype.is_floating_point:
            return torch.randn(shape, dtype=dtype, device=device)
        return torch.zeros(shape, dtype=dtype, device=device)
    return spec
