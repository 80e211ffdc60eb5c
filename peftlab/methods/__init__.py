"""Every adaptation method, registered by name, found in this package: no list of them is kept.

Each method module names its method classes in a module-level ``REGISTERED`` tuple; importing this
package imports every module of it (in file-name order) except :data:`HELPERS`, and registers
those classes in the order of README's methods table (``table_order``, then name). Adding a
method is adding its module: nothing here changes.

:func:`register` refuses a method that does not declare everything a method must (its
parameters, closed-form count, activation flow, ...): see :data:`~peftlab.methods.base.DECLARED`.
"""

from __future__ import annotations

import importlib
import pkgutil

from peftlab.infra.registry import Registry
from peftlab.methods.base import Method, undeclared

METHODS: Registry[Method] = Registry("method")

#: the modules of this package that hold no method: the interface, the shared parts of the peft
#: and bottleneck families, and README's table generator (which reads ``METHODS``); every other
#: module must register at least one method
HELPERS = frozenset({"base", "peft_common", "bottleneck", "bottleneck_layers", "readme"})


def refusal(method: Method) -> str | None:
    """Why ``method`` cannot be registered (what it leaves undeclared), or None."""
    missing = undeclared(method)
    if missing:
        return f"method {type(method).__name__} does not declare {', '.join(missing)}"
    tag = method.Params.model_fields["method"].default
    if tag != method.name:
        return f"method {method.name!r}: its Params are tagged method={tag!r}"
    return None


def register(method: Method) -> None:
    """Add ``method`` to ``METHODS`` once it declares all a method must; a TypeError names what is missing."""
    why = refusal(method)
    if why:
        raise TypeError(why)
    METHODS.add(method.name, method)


def discover() -> list[Method]:
    """One instance of every class the package's method modules register, each checked by
    :func:`refusal`, in the table's order. A module outside :data:`HELPERS` that registers
    nothing is refused: a method left unregistered would be a method nobody can name."""
    found: list[Method] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in HELPERS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = getattr(module, "REGISTERED", ())
        if not classes:
            raise TypeError(f"module {module.__name__} registers no method: end it with REGISTERED = (YourMethod,)")
        for cls in classes:
            method = cls()
            why = refusal(method)
            if why:
                raise TypeError(f"{module.__name__}: {why}")
            found.append(method)
    return sorted(found, key=lambda m: (m.table_order, m.name))


for _method in discover():
    register(_method)

__all__ = ["HELPERS", "METHODS", "Method", "discover", "register"]
