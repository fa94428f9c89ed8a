"""What-ifs on compiled code never touch the user's compiled code.

dynamo keeps its compiled code per code object (``Net.forward.__code__``,
``Module._call_impl.__code__`` for ``model.compile()``, a compiled
function's code), with a recompile limit per code object. A what-if that
compiled into those caches would leave entries behind that the user's next
call could pick (a dynamic-shape graph in place of the static one), and that
count against the user's recompile limit until the model silently runs eager.

So while a what-if runs, every function whose code dynamo has compiled runs
a copy of that code instead (``code.replace()``: the same bytecode, an empty
cache of its own), and afterwards gets its own code back. The copies are
kept with the profile, so what-ifs after the first reuse what earlier ones
compiled and recompile only where the user's code would; the first one
compiles afresh. Also put back afterwards: dynamo's automatic-dynamic record
(``torch._dynamo.pgo``: shapes it has seen change, keyed by file, line and
name, so shared by a code object and its copy), its counters, and the dynamic
marks (``torch._dynamo.mark_dynamic``) of the tensors in the namespace.
"""

from __future__ import annotations

import copy
import gc
import sys
import types
from collections import Counter
from typing import Any

from epochmagic.capture.patching import Patches


class CompiledCopies:
    """Copies of the compiled code objects, one per original, for what-ifs."""

    def __init__(self) -> None:
        # by id: code objects compare equal by content, so an original and its
        # copy are equal keys
        self.copies: dict[int, tuple[types.CodeType, types.CodeType]] = {}
        self._running: dict[int, list[types.FunctionType]] = {}  # gc.get_referrers is slow

    def swap(self, patches: Patches, user_ns: dict[str, Any]) -> int:
        """Run every compiled function on its copy until ``patches`` closes,
        when dynamo's records are put back too; returns how many functions
        were switched."""
        if "torch._dynamo" not in sys.modules:
            return 0
        patches.on_close(_Saved.take(user_ns).restore)  # closed last: after the code swaps
        switched = 0
        for fn, replacement in self._targets():
            try:
                patches.swap(fn, "__code__", replacement)
            except ValueError:  # a closure that does not fit: leave it
                continue
            switched += 1
        return switched

    def _targets(self) -> list[tuple[types.FunctionType, types.CodeType]]:
        """(function, copy of its code) for every function running compiled code."""
        ours = {id(copied) for _, copied in self.copies.values()}
        targets = []
        for code in compiled_codes():
            if id(code) in ours:
                continue
            running = [f for f in self._running.get(id(code), ()) if f.__code__ is code]
            if not running:
                running = self._running[id(code)] = _functions_running(code)
            for fn in running:
                if id(code) not in self.copies:
                    self.copies[id(code)] = (code, code.replace())
                targets.append((fn, self.copies[id(code)][1]))
        return targets


def compiled_codes() -> list[types.CodeType]:
    """Code objects with compiled code in dynamo's cache, other than the
    resume functions dynamo generates after a graph break (only compiled
    code calls those, and a copy's compiled code calls its own)."""
    from torch._dynamo import convert_frame
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    found = []
    for ref in list(convert_frame.input_codes.seen):
        code = ref()
        if code is not None and not _is_resume(code) and _debug_get_cache_entry_list(code):
            found.append(code)
    return found


def _is_resume(code: types.CodeType) -> bool:
    try:
        from torch._dynamo.resume_execution import ContinueExecutionCache

        if code in ContinueExecutionCache.generated_code_metadata:
            return True
    except (ImportError, AttributeError, TypeError):
        pass
    return "resume_in_" in code.co_name


def cache_entries(code: types.CodeType) -> list[Any]:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return list(_debug_get_cache_entry_list(code))


def _functions_running(code: types.CodeType) -> list[types.FunctionType]:
    return [
        f
        for f in gc.get_referrers(code)
        if isinstance(f, types.FunctionType) and f.__code__ is code
    ]


class _Saved:
    """dynamo's automatic-dynamic record, counters and tensors' dynamic marks."""

    def __init__(self) -> None:
        self.pgo: Any = None
        self.counters: dict[str, Counter[str]] = {}
        self.marks: list[tuple[Any, dict[str, Any]]] = []

    @classmethod
    def take(cls, user_ns: dict[str, Any]) -> _Saved:
        import torch
        from torch._dynamo import utils

        saved = cls()
        pgo = sys.modules.get("torch._dynamo.pgo")
        if pgo is not None and getattr(pgo, "_CODE_STATE", None) is not None:
            saved.pgo = copy.deepcopy(pgo._CODE_STATE)
        saved.counters = {k: Counter(v) for k, v in utils.counters.items()}
        for value in list(user_ns.values()):
            # mark_dynamic and friends set Python attributes on the tensor
            if isinstance(value, torch.Tensor) and vars(value):
                saved.marks.append((value, {k: copy.copy(v) for k, v in vars(value).items()}))
        return saved

    def restore(self) -> None:
        from torch._dynamo import utils

        pgo: Any = sys.modules.get("torch._dynamo.pgo")
        if pgo is not None and hasattr(pgo, "_CODE_STATE"):
            pgo._CODE_STATE = self.pgo
        utils.counters.clear()
        for key, counts in self.counters.items():
            utils.counters[key].update(counts)
        for tensor, marks in self.marks:
            vars(tensor).clear()
            vars(tensor).update(marks)
