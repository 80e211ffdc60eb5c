"""Every adaptation method, registered by name. The only place that lists them."""

from __future__ import annotations

from peftlab.methods.base import Method
from peftlab.methods.clip_methods import ClassEmbeddings, ClipZeroShot, Coop
from peftlab.methods.full import Full
from peftlab.methods.houlsby import Houlsby
from peftlab.methods.ia3 import Ia3
from peftlab.methods.icl import Icl
from peftlab.methods.linear_probe import LinearProbe
from peftlab.methods.lm_lora import LmLora
from peftlab.methods.lora import Lora
from peftlab.methods.p_tuning import PTuning
from peftlab.methods.partial import Partial
from peftlab.methods.pfeiffer import Pfeiffer
from peftlab.methods.prefix_tuning import PrefixTuning
from peftlab.methods.prompt_tuning import PromptTuning
from peftlab.methods.qlora import Qlora
from peftlab.registry import Registry

METHODS: Registry[Method] = Registry("method")
for _cls in (Full, Partial, LinearProbe, Lora, Qlora, Ia3, PromptTuning, PTuning, PrefixTuning, Houlsby, Pfeiffer,
             ClipZeroShot, Coop, ClassEmbeddings, Icl, LmLora):
    METHODS.add(_cls.name, _cls())

__all__ = ["METHODS", "Method"]
