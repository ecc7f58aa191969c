"""Lazy package attributes (PEP 562): a package's public names, imported from their modules on first use.

A package's ``__init__`` names where each public name lives and imports the same names under ``TYPE_CHECKING``
(so type checkers and editors see them); at run time :func:`lazy_attributes` supplies the module ``__getattr__``
and ``__dir__`` that import a name's module the first time the name is asked for::

    _EXPORTS = {"matsteer.core.steerer": ("Steerer",)}
    if TYPE_CHECKING:
        from matsteer.core.steerer import Steerer
    else:
        __getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

so that ``import matsteer`` (or ``import matsteer.core``) costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping


def lazy_attributes(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` maps each defining module to its public names.

    A name is imported from its module on first access and stored in the package's namespace, so later accesses
    are plain lookups. A name that is not exported but is a submodule (``matsteer.core`` after ``import matsteer``)
    is imported as a submodule, as it was when the package imported everything up front; anything else raises
    ``AttributeError`` (which ``from package import submodule`` relies on).
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
