"""Which code is the notebook's own, and how its files are named.

Both line sources need it: the traced run registers the notebook-defined
functions with line_profiler, and the sampled lines expand every frame of the
cell's and those functions' files (``own``) and show them as the user's
prompt (``label``: ``Cell In[5]``) rather than a cache file's path.
"""

from __future__ import annotations

import linecache
import types
from collections.abc import Callable
from typing import Any


def is_notebook_file(shell: Any, filename: str) -> bool:
    """A file of code typed into the notebook: a cell IPython compiled (its
    compile cache knows it), or an ipykernel cell file that is only in
    ``linecache`` (no modification time; a lazy entry, a 1-tuple, is a
    module's: dynamo's generated code has them)."""
    if filename in getattr(shell.compile, "_filename_map", {}):
        return True
    entry: Any = linecache.cache.get(filename)
    return (
        entry is not None
        and len(entry) > 1
        and entry[1] is None
        and (filename.startswith("<ipython-input") or "ipykernel_" in filename)
    )


def file_label(shell: Any, filename: str) -> str:
    """``Cell In[N]`` for a cell's file, the file name otherwise."""
    fmap = getattr(shell.compile, "_filename_map", {})
    return f"Cell In[{fmap[filename]}]" if filename in fmap else filename


def own_code(shell: Any, cell_filename: str) -> tuple[Callable[[str], bool], Callable[[str], str]]:
    """``own(filename)`` and ``label(filename)`` for the sampled lines: the
    cell's file and the notebook's other cells are own code. Memoised: a run
    asks about the same few files once per frame of every sample."""
    known: dict[str, bool] = {cell_filename: True}

    def own(filename: str) -> bool:
        mine = known.get(filename)
        if mine is None:
            mine = known[filename] = is_notebook_file(shell, filename)
        return mine

    return own, lambda filename: file_label(shell, filename)


def notebook_functions(shell: Any) -> list[types.FunctionType]:
    """The functions (also methods and properties of classes) defined in the
    notebook and bound in its namespace."""
    found: dict[int, types.FunctionType] = {}

    def add(obj: Any) -> None:
        fn = getattr(obj, "__func__", obj)
        if isinstance(fn, types.FunctionType) and is_notebook_file(shell, fn.__code__.co_filename):
            found[id(fn)] = fn

    for value in list(shell.user_ns.values()):
        if isinstance(value, type) and value.__module__ == "__main__":
            for attr in vars(value).values():
                if isinstance(attr, property):
                    for f in (attr.fget, attr.fset):
                        add(f)
                else:
                    add(attr)
        else:
            add(value)
    return list(found.values())
