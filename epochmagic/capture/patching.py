"""The only place the probes change torch: attributes replaced, hooks added,
and the undo of each, run in one ``close()`` whatever happened.

Two rules keep a compiled model (``torch.compile``) exactly as it runs
without the profiler:

* Every wrapper starts with ``if is_compiling(): return original(...)``, so
  when dynamo traces through one (a patched ``Module.__call__`` of a submodule,
  ``torch.autograd.grad`` inside a compiled function) it sees the original
  call and nothing of ours; :func:`register_with_dynamo` also asks dynamo
  never to compile a frame of ours when one runs eagerly inside compiled code
  (after a graph break).
* What dynamo would guard on when it inlines a module call is taken away
  while it compiles and put back after (:meth:`Patches.hide`): the global
  module hooks (with its default ``skip_nnmodule_hook_guards`` it guards
  nothing on empty hook dicts) and the ``__call__`` patched on a root
  module's class (without one in the class dict it calls ``forward``
  directly, guarding only that). The compiled code then neither runs our
  hooks nor recompiles when the patches go away. Functions dynamo guards by
  their code when it inlines them cannot be hidden (every later call would
  fail that guard and recompile): ``Optimizer.zero_grad`` is replaced through
  torch's own ``_disable_dynamo``, whose code is the same for every function
  it wraps; ``Module.zero_grad`` is dropped for the rest of the run when the
  first compile starts; ``torch.autograd.backward``/``grad`` stay visible
  and transparent (called directly inside compiled code, which is rare, they
  cost one recompile after the run).
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any, Literal

_HERE = __file__.rsplit("/", 2)[0]  # the package: every layer's code
_REGISTERED: set[types.CodeType] = set()
_WALKED: set[str] = set()  # modules whose code is registered (a walk allocates: once each)


def register_with_dynamo() -> None:
    """Hand every code object of epochmagic to dynamo's skip list: a frame of
    ours that runs while dynamo's frame callback is active (a wrapper called
    from the eager part of compiled code, a compile callback) runs as it is,
    never traced or compiled; the frames it calls are treated as usual.
    Called once dynamo is imported (importing it costs ~1 s: a CPU cell that
    never compiles must not pay that); idempotent."""
    try:
        from torch._dynamo.eval_frame import skip_code
    except ImportError:  # a torch without it: wrappers are traced, transparently
        return
    for name, module in list(sys.modules.items()):
        if module is None or name in _WALKED:
            continue
        if not (name == "epochmagic" or name.startswith("epochmagic.")):
            continue
        _WALKED.add(name)
        for code in _codes(vars(module).values()):
            if code not in _REGISTERED:
                _REGISTERED.add(code)
                skip_code(code)


def _codes(values: Any) -> set[types.CodeType]:
    """Code objects of the functions and classes among ``values``, with every
    function, comprehension and lambda nested in them."""
    found: set[types.CodeType] = set()
    todo: list[Any] = list(values)
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, types.CodeType):
            if v.co_filename.startswith(_HERE):
                found.add(v)
                todo.extend(c for c in v.co_consts if isinstance(c, types.CodeType))
        elif isinstance(v, (staticmethod, classmethod)):
            todo.append(v.__func__)
        elif isinstance(v, property):
            todo.extend(f for f in (v.fget, v.fset, v.fdel) if f is not None)
        elif isinstance(v, type) and v.__module__.startswith("epochmagic"):
            todo.extend(vars(v).values())
        elif isinstance(v, types.FunctionType):
            todo.append(v.__code__)
    return found


# What is installed now, across every open Patches: undo key -> description.
# The tests' leak check reads it (``installed()``) after every test.
_INSTALLED: dict[int, str] = {}
# Classes and modules ever patched, with the attribute: their values are
# compared before and after each test as well (``global_targets()``).
_GLOBAL_TARGETS: dict[tuple[int, str], tuple[Any, str]] = {}


def installed() -> list[str]:
    """What some Patches has installed and not yet undone."""
    return sorted(_INSTALLED.values())


def global_targets() -> list[tuple[Any, str]]:
    """Every (class or module, attribute) a Patches ever replaced."""
    return list(_GLOBAL_TARGETS.values())


def _describe(owner: Any, name: str) -> str:
    return f"{getattr(owner, '__qualname__', None) or getattr(owner, '__name__', type(owner).__name__)}.{name}"


class Patches:
    """Replaced attributes and added hooks of one run, undone by ``close``
    (also as a context manager). Nothing in epochmagic changes torch, the
    user's objects or the interpreter's globals except through one of these."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._module_hooks: list[Any] = []  # handles of global module hooks
        self._hideable: list[tuple[Any, str, Any, bool, Any]] = []  # class __call__ patches
        self._droppable: list[Callable[[], None]] = []
        self._hidden: list[tuple[dict[Any, Any], Any, Any]] | None = None
        self._unset: list[tuple[Any, str, Any]] = []  # the patches hide() took off

    def replace(
        self, owner: Any, name: str, wrapper: Any, hide: bool = False, drop: bool = False
    ) -> Any:
        """Set ``owner.name = wrapper``; returns the value it replaces. Undone
        exactly: an inherited attribute is deleted again, an own one restored.
        ``hide``: also undone while dynamo compiles. ``drop``: undone for good
        when dynamo first compiles (a plain function it would inline and guard
        by its code: ``Module.zero_grad``)."""
        had_own = name in vars(owner)
        original_own = vars(owner).get(name)
        original = getattr(owner, name)

        def restore() -> None:
            # someone who wrapped ours during the run (lightning wraps
            # torch.compile when it is imported) keeps their wrapper; ours
            # passes straight through once the run is over
            if vars(owner).get(name) is wrapper:
                _unset(owner, name, had_own, original_own)

        setattr(owner, name, wrapper)
        if isinstance(owner, (type, types.ModuleType)):
            _GLOBAL_TARGETS.setdefault((id(owner), name), (owner, name))
        restore = self._tracked(_describe(owner, name), restore)
        if drop:
            self._droppable.append(restore)
        if hide:
            self._hideable.append((owner, name, wrapper, had_own, original_own))
        return original

    def swap(self, obj: Any, name: str, value: Any) -> Any:
        """Set an attribute of one object (a dataset's ``transform``, a
        function's ``__code__``) and put the old value back at close; returns
        the old value."""
        original = getattr(obj, name)
        setattr(obj, name, value)
        self._tracked(_describe(obj, name), lambda: setattr(obj, name, original))
        return original

    def setting(self, get: Callable[[], Any], set_: Callable[[Any], Any], value: Any) -> Any:
        """Change a process setting through its setter (``torch.set_num_threads``)
        and set it back at close; returns the old value."""
        original = get()
        set_(value)
        self._tracked(getattr(set_, "__qualname__", repr(set_)), lambda: set_(original))
        return original

    def hook(self, handle: Any, module_hook: bool = False) -> Any:
        """Remove ``handle`` at close; a global module hook is also hidden
        while dynamo compiles."""
        self._tracked(f"hook {handle.id}", handle.remove)
        if module_hook:
            self._module_hooks.append(handle)
        return handle

    def on_close(self, undo: Callable[[], Any]) -> None:
        self._tracked(getattr(undo, "__qualname__", repr(undo)), undo)

    def warning_filter(self, action: Literal["always", "ignore"], message: str) -> None:
        """``warnings.filterwarnings(action, message=message)`` until close. A
        filter the user already had (``filterwarnings`` moves it to the front
        instead of adding one) stays theirs."""
        count = len(warnings.filters)
        warnings.filterwarnings(action, message=message)
        if len(warnings.filters) == count:
            return
        added = warnings.filters[0]

        def remove() -> None:
            if added in warnings.filters:
                warnings.filters.remove(added)  # type: ignore[attr-defined]  # typeshed: filters is a Sequence
            warnings._filters_mutated()  # type: ignore[attr-defined]  # private: not in typeshed

        self._tracked(f"warning filter {message!r}", remove)

    def _tracked(self, what: str, undo: Callable[[], Any]) -> Callable[[], None]:
        """Register ``undo`` to run at close, listed in ``installed()`` until it
        has run; returns the registered callable (idempotent: a dropped patch is
        undone early and its close-time call does nothing)."""
        key = object()  # alive while undo_once is: its id stays unique
        _INSTALLED[id(key)] = what

        def undo_once() -> None:
            if _INSTALLED.pop(id(key), None) is not None:
                undo()

        self._stack.callback(undo_once)
        return undo_once

    def __enter__(self) -> Patches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enter(self, context: Any) -> Any:
        return self._stack.enter_context(context)

    def forget_module_hook(self, handle: Any) -> None:
        handle.remove()
        if handle in self._module_hooks:
            self._module_hooks.remove(handle)
        if self._hidden is not None:
            self._hidden = [h for h in self._hidden if h[1] != handle.id]

    # -- dynamo ----------------------------------------------------------------
    def hide(self) -> None:
        """Take our global module hooks out of torch's dicts and the hideable
        attribute patches off their owners, and drop the droppable ones (a
        compile starts)."""
        while self._droppable:
            self._droppable.pop()()
        if self._hidden is not None:
            return
        hidden: list[tuple[dict[Any, Any], Any, Any]] = []
        for handle in self._module_hooks:
            for ref in (handle.hooks_dict_ref, *handle.extra_dict_ref):
                d = ref()
                if d is not None and handle.id in d:
                    hidden.append((d, handle.id, d.pop(handle.id)))
        for owner, name, wrapper, had_own, original_own in self._hideable:
            if vars(owner).get(name) is wrapper:
                _unset(owner, name, had_own, original_own)
                self._unset.append((owner, name, wrapper))
        self._hidden = hidden

    def show(self) -> None:
        """Put everything back (the compile ended)."""
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            return
        for d, key, value in hidden:
            d[key] = value
        unset, self._unset = self._unset, []
        for owner, name, wrapper in unset:
            setattr(owner, name, wrapper)

    def close(self) -> None:
        self.show()
        self._module_hooks.clear()
        self._hideable.clear()
        self._droppable.clear()
        self._stack.close()


def _unset(owner: Any, name: str, had_own: bool, original_own: Any) -> None:
    if had_own:
        setattr(owner, name, original_own)
    elif name in vars(owner):
        delattr(owner, name)
