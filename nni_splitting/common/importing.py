"""Objects named by a string in a config: ``package.module:attribute`` (or ``package.module.attribute``).

One place for the user's factories (``model:``, ``dataset:``), so that every bad name gets the same
clear ``ValueError``: the module that cannot be imported (and why), the attribute that is missing, or
an object that cannot be called.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["is_import_path", "import_object", "import_callable"]


def is_import_path(name: Any) -> bool:
    """True for ``"pkg.module:attr"`` and dotted ``"pkg.module.attr"`` names (not a bare registered name)."""
    return isinstance(name, str) and (":" in name or "." in name)


def import_object(path: str, what: str = "object") -> Any:
    """The object named ``path`` (``module:attribute`` or ``module.attribute``; the attribute may be dotted).

    Raises ``ValueError`` naming ``what``, the module and the reason when it cannot be imported or found.
    """
    if not is_import_path(path):
        raise ValueError(f"{what} {path!r} is not an import path: write 'package.module:function'")
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{what} {path!r} is not an import path: write 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or whatever the module raises while it is imported
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} "
                         f"({type(error).__name__}: {error}); is it installed, or on PYTHONPATH / in the "
                         f"trial's code directory?") from error
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    return value


def import_callable(path: str, what: str = "factory") -> Callable[..., Any]:
    """:func:`import_object`, checked to be callable."""
    value = import_object(path, what)
    if not callable(value):
        raise ValueError(f"{what} {path!r} is a {type(value).__name__}, not a callable")
    return value
