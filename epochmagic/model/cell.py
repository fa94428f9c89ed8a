"""A compiled cell: plain data every layer may hold."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from types import CodeType


@dataclass
class Cell:
    """A compiled cell: its code, its source and the name tracebacks show."""

    source: str
    code: CodeType
    filename: str
    tree: ast.Module
    label: str
