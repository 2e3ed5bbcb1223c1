"""torch, imported on first use: what reads the methods' declarations loads no torch.

The method modules declare their name, parameters and search ranges at their top, and the
study folder, the analysis, the search spaces and ``tagtune --help`` read those declarations;
importing torch for them would cost ~2 s a process. A method module therefore names
``torch`` and ``F`` (``torch.nn.functional``) through :class:`LazyModule`: the real module is
imported when a step first calls into it, and then every access is the real module's own
attribute (the numbers cannot differ). The pattern of SPEC 1 (scientific-python's lazy loading).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Module ``name``, imported at the first attribute read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:  # only for names not set in __init__
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")

__all__ = ["F", "LazyModule", "torch"]
