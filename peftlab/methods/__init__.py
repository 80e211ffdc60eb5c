"""Every adaptation method, registered by name. The only place that lists them."""

from __future__ import annotations

from peftlab.methods.base import Method
from peftlab.methods.full import Full
from peftlab.methods.linear_probe import LinearProbe
from peftlab.methods.lora import Lora
from peftlab.methods.partial import Partial
from peftlab.registry import Registry

METHODS: Registry[Method] = Registry("method")
for _cls in (Full, Partial, LinearProbe, Lora):
    METHODS.add(_cls.name, _cls())

__all__ = ["METHODS", "Method"]
