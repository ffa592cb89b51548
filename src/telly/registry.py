"""How a module reaches the behaviour a registry entry names (``telly.tasks``, ``telly.probing.properties``).

Registry entries hold *names* of functions, not the functions, so that the registries import nothing and
a stage depends only on the modules it runs; the module that owns a step looks the name up here.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from telly.errors import TellyError


def named(module: ModuleType, name: str, what: str) -> Any:
    """The object ``name`` of ``module``: how an owning module reaches the behaviour a registry entry names.

    A name that the module lacks is a clear error naming the entry's field, so a new task or property
    fails on its first use, and ``tests/test_tasks.py`` resolves every name of every entry.
    """
    found = getattr(module, name, None) if name else None
    if found is None:
        raise TellyError(f"{what} = {name!r}: {module.__name__} has no such function")
    return found
