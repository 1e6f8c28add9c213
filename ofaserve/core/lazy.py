"""Public names of a stage package, imported from their modules on first use (PEP 562).

A stage package (``ofaserve.compress``, ``ofaserve.export``, ``ofaserve.serve``) offers its
entry function at the top (``from ofaserve.compress import compress_model``), but its CLI
module lives in the same package: ``ofaserve compress`` must set paddle's CPU threads before
paddle is imported, and ``ofaserve serve`` must start without the repository builder's
imports. Importing the package therefore imports nothing of the stage; each name is looked up
in the module that defines it when it is first read. (No ``typing`` import either: the
serving CLI should not pay for it.)
"""
from __future__ import annotations

import importlib


def lazy_attributes(package: str, exports: dict[str, tuple[str, ...]]) -> tuple:
    """``(__getattr__, __dir__, __all__)`` for ``package``: ``exports`` maps each module to
    the public names it defines. An unknown name raises AttributeError, so ``from package
    import submodule`` still finds the package's submodules. (Type checkers read the names'
    types from the package's ``__init__.pyi``, which imports them from the same modules.)"""
    namespace = importlib.import_module(package).__dict__
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, list(where)
