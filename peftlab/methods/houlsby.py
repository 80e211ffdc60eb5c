"""``houlsby``: bottleneck adapters after both the attention and the FFN output projection of
every block (Houlsby et al., 2019). Not mergeable (see :mod:`peftlab.methods.bottleneck`)."""

from __future__ import annotations

from typing import Literal

from peftlab.methods.bottleneck import BottleneckMethod, BottleneckParams


class HoulsbyParams(BottleneckParams):
    method: Literal["houlsby"] = "houlsby"


class Houlsby(BottleneckMethod):
    name = "houlsby"
    Params = HoulsbyParams
