"""``houlsby``: bottleneck adapters after both the attention and the FFN output projection of
every block (Houlsby et al., 2019). Not mergeable (see :mod:`peftlab.methods.bottleneck`)."""

from __future__ import annotations

from typing import Literal

from peftlab.methods.base import Readme
from peftlab.methods.bottleneck import BottleneckMethod, BottleneckParams


class HoulsbyParams(BottleneckParams):
    method: Literal["houlsby"] = "houlsby"


class Houlsby(BottleneckMethod):
    name = "houlsby"
    Params = HoulsbyParams
    table_order = 330
    readme = Readme(
        on="text",
        trains=("bottleneck adapters (down, `nonlinearity`, up, residual) after the (self-)attention and the FFN "
                "output projection of every block (T5: encoder and decoder blocks); the head; not mergeable"),
        closed_form="2L × (2 d b + b + d) + head, b = `bottleneck_size` or d / `reduction_factor` (default 16)",
    )


REGISTERED = (Houlsby,)
