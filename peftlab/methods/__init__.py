"""Every adaptation method, registered by name. The only place that lists them.

:func:`register` refuses a method that does not declare everything a method must (its
parameters, closed-form count, activation flow, ...): see :data:`~peftlab.methods.base.DECLARED`.
"""

from __future__ import annotations

from peftlab.methods.adalora import Adalora
from peftlab.methods.base import Method, undeclared
from peftlab.methods.boft import Boft
from peftlab.methods.clip_methods import ClassEmbeddings, ClipZeroShot, Coop
from peftlab.methods.fourierft import Fourierft
from peftlab.methods.full import Full
from peftlab.methods.generic_peft import GenericPeft
from peftlab.methods.houlsby import Houlsby
from peftlab.methods.ia3 import Ia3
from peftlab.methods.icl import Icl
from peftlab.methods.linear_probe import LinearProbe
from peftlab.methods.ln_tuning import LnTuning
from peftlab.methods.loha import Loha
from peftlab.methods.lokr import Lokr
from peftlab.methods.oft import Oft
from peftlab.methods.lm_lora import LmLora
from peftlab.methods.lora import Lora
from peftlab.methods.p_tuning import PTuning
from peftlab.methods.partial import Partial
from peftlab.methods.pfeiffer import Pfeiffer
from peftlab.methods.prefix_tuning import PrefixTuning
from peftlab.methods.prompt_tuning import PromptTuning
from peftlab.methods.qlora import Qlora
from peftlab.methods.vera import Vera
from peftlab.infra.registry import Registry

METHODS: Registry[Method] = Registry("method")


def register(method: Method) -> None:
    """Add ``method`` to ``METHODS`` once it declares all a method must; a TypeError names what is missing."""
    missing = undeclared(method)
    if missing:
        raise TypeError(f"method {type(method).__name__} does not declare {', '.join(missing)}")
    tag = method.Params.model_fields["method"].default
    if tag != method.name:
        raise TypeError(f"method {method.name!r}: its Params are tagged method={tag!r}")
    METHODS.add(method.name, method)


# in the order of README's methods table
for _cls in (Full, Partial, LinearProbe,
             Lora, Qlora, Adalora, Vera, Loha, Lokr, Oft, Boft, Fourierft, Ia3, LnTuning, GenericPeft,
             PromptTuning, PTuning, PrefixTuning, Houlsby, Pfeiffer,
             Icl, LmLora, ClipZeroShot, Coop, ClassEmbeddings):
    register(_cls())

__all__ = ["METHODS", "Method", "register"]
