"""Snapshot and restore of everything an auxiliary run may change (docs/design.md §5.2).

Auxiliary runs (the traced run for line attribution, what-ifs) re-execute the
user's cell; afterwards models, optimizers, schedulers, grad scalers, RNG
states, loaders' generators and the names the cell rebinds are exactly as they
were. Tensors are restored in place, so references the user holds (an
optimizer's parameter list, a tied weight) stay valid.

Not rolled back: objects mutated in place that are none of the above (a list
the cell appends to without rebinding it, a file it writes), and progress
counters deep inside a library's trainer. :func:`unrestorable` names the known
library trainers so callers can decline to re-run them.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from epochmagic.capture.rng import rng_state, set_rng_state

_MISSING = object()
_UNRESTORABLE = {
    ("lightning.pytorch.trainer.trainer", "Trainer"): "a Lightning Trainer",
    ("pytorch_lightning.trainer.trainer", "Trainer"): "a Lightning Trainer",
    ("ignite.engine.engine", "Engine"): "an Ignite Engine",
    ("ignite.engine", "Engine"): "an Ignite Engine",
    ("transformers.trainer", "Trainer"): "a Hugging Face Trainer",
}


def rebound_names(tree: ast.AST) -> set[str]:
    """Top-level names a cell binds (assignments, loops, defs, imports)."""
    names: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_Name(self, node: ast.Name) -> None:
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                names.add(node.id)

        def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
            names.add(node.name)  # do not descend: its locals are not top-level

        def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
            names.add(node.name)

        def visit_ClassDef(self, node: ast.ClassDef) -> None:
            names.add(node.name)

        def visit_Lambda(self, node: ast.Lambda) -> None:
            return

        def visit_Global(self, node: ast.Global) -> None:
            names.update(node.names)

        def visit_alias(self, node: ast.alias) -> None:
            names.add((node.asname or node.name).split(".")[0])

    Visitor().visit(tree)
    return names


def unrestorable(user_ns: dict[str, Any]) -> str | None:
    """Describe a library trainer in the namespace whose progress a re-run
    would advance beyond what a snapshot restores, or None."""
    for value in list(user_ns.values()):
        for klass in type(value).__mro__:
            what = _UNRESTORABLE.get((klass.__module__, klass.__name__))
            if what:
                return what
    return None


@dataclass
class _ModuleState:
    module: torch.nn.Module
    training: bool
    params: dict[str, Any]
    buffers: dict[str, Any]
    children: dict[str, Any]
    attrs: dict[str, Any]


@dataclass
class Snapshot:
    user_ns: dict[str, Any]
    names: dict[str, Any] = field(default_factory=dict)
    modules: list[_ModuleState] = field(default_factory=list)
    tensors: list[tuple[torch.Tensor, torch.Tensor, Any, bool]] = field(default_factory=list)
    optimizers: list[tuple[Any, dict[Any, Any], list[dict[str, Any]], dict[str, Any]]] = field(
        default_factory=list
    )
    stateful: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    objects: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    generators: list[tuple[torch.Generator, torch.Tensor]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    _tensor_ids: set[int] = field(default_factory=set)

    @classmethod
    def take(
        cls,
        user_ns: dict[str, Any],
        names: set[str],
        modules: Sequence[Any] = (),
        optimizers: Sequence[Any] = (),
        loaders: Sequence[Any] = (),
    ) -> Snapshot:
        snap = cls(user_ns)
        snap.names = {n: user_ns.get(n, _MISSING) for n in names}
        values = list(user_ns.values())
        seen: set[int] = set()
        for m in [*modules, *(v for v in values if isinstance(v, torch.nn.Module))]:
            snap._add_module(m, seen)
        opts = [*optimizers, *(v for v in values if isinstance(v, torch.optim.Optimizer))]
        for opt in {id(o): o for o in opts}.values():
            snap._add_optimizer(opt)
        for v in values:
            if _is_stateful(v):
                if not isinstance(v, torch.amp.GradScaler) or v.is_enabled():
                    snap.stateful.append((v, _clone(v.state_dict())))
            elif _is_plain_object(v):
                snap.objects.append((v, dict(vars(v))))
        gens: dict[int, torch.Generator] = {}
        for loader in [
            *loaders,
            *(v for v in values if isinstance(v, torch.utils.data.DataLoader)),
        ]:
            for g in (
                getattr(loader, "generator", None),
                getattr(getattr(loader, "sampler", None), "generator", None),
            ):
                if isinstance(g, torch.Generator):
                    gens[id(g)] = g
        snap.generators = [(g, g.get_state()) for g in gens.values()]
        snap.rng = rng_state()
        return snap

    def _add_module(self, root: torch.nn.Module, seen: set[int]) -> None:
        for m in root.modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            self.modules.append(
                _ModuleState(
                    m,
                    m.training,
                    dict(m._parameters),
                    dict(m._buffers),
                    dict(m._modules),
                    dict(vars(m)),
                )
            )
            for t in [*m._parameters.values(), *m._buffers.values()]:
                if t is None or id(t) in self._tensor_ids:
                    continue
                self._tensor_ids.add(id(t))
                grad = t.grad.detach().clone() if t.grad is not None else None
                self.tensors.append((t, t.detach().clone(), grad, t.requires_grad))

    def _add_optimizer(self, opt: Any) -> None:
        state = {p: _clone(s) for p, s in opt.state.items()}
        groups = [
            {k: (list(v) if k == "params" else _clone(v)) for k, v in g.items()}
            for g in opt.param_groups
        ]
        self.optimizers.append((opt, state, groups, dict(vars(opt))))

    def restore(self) -> None:
        """Put everything back as it was at :meth:`take`."""
        for name, value in self.names.items():
            if value is _MISSING:
                self.user_ns.pop(name, None)
            else:
                self.user_ns[name] = value
        for ms in self.modules:
            m = ms.module
            _reset_dict(m._parameters, ms.params)
            _reset_dict(m._buffers, ms.buffers)
            _reset_dict(m._modules, ms.children)
            attrs = vars(m)
            for k in [k for k in attrs if k not in ms.attrs]:
                del attrs[k]
            attrs.update(ms.attrs)
            m.training = ms.training
        with torch.no_grad():
            for t, saved, grad, requires_grad in self.tensors:
                _copy_into(t, saved)
                t.requires_grad_(requires_grad)
                if grad is None:
                    t.grad = None
                elif t.grad is not None and t.grad.shape == grad.shape:
                    t.grad.copy_(grad)
                else:
                    t.grad = grad.clone()
        for opt, state, groups, attrs in self.optimizers:
            _reset_dict(vars(opt), attrs)
            opt.state.clear()
            opt.state.update({p: _clone(s) for p, s in state.items()})
            for g, saved_g in zip(opt.param_groups, groups):
                g.clear()
                g.update({k: (list(v) if k == "params" else _clone(v)) for k, v in saved_g.items()})
        for obj, sd in self.stateful:
            obj.load_state_dict(_clone(sd))
        for obj, attrs in self.objects:
            _reset_dict(vars(obj), attrs)
        for g, st in self.generators:
            g.set_state(st)
        set_rng_state(self.rng)


def _reset_dict(target: dict[str, Any], saved: dict[str, Any]) -> None:
    if target == saved and all(target[k] is saved[k] for k in saved):
        return
    target.clear()
    target.update(saved)


def _copy_into(t: torch.Tensor, saved: torch.Tensor) -> None:
    if t.shape == saved.shape and t.dtype == saved.dtype and t.device == saved.device:
        t.copy_(saved)
    else:
        t.data = saved.clone()


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    return value


def _is_stateful(v: Any) -> bool:
    """LR schedulers and grad scalers: restored through their state_dict."""
    sched = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    return isinstance(v, (*sched, torch.amp.GradScaler))


def _is_plain_object(v: Any) -> bool:
    """Instances whose attributes a re-run may rebind (a skorch net's module_)."""
    if isinstance(
        v,
        (
            type,
            types.ModuleType,
            types.FunctionType,
            types.BuiltinFunctionType,
            types.MethodType,
            torch.Tensor,
            torch.nn.Module,
            torch.optim.Optimizer,
        ),
    ):
        return False
    try:
        return isinstance(vars(v), dict)
    except TypeError:
        return False
