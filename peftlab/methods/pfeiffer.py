"""``pfeiffer``: one bottleneck adapter per block, after the FFN output projection (Pfeiffer et
al., 2020): half of Houlsby's adapters for similar quality. Not mergeable (see
:mod:`peftlab.methods.bottleneck`)."""

from __future__ import annotations

from typing import Literal

from peftlab.methods.bottleneck import BottleneckMethod, BottleneckParams


class PfeifferParams(BottleneckParams):
    method: Literal["pfeiffer"] = "pfeiffer"


class Pfeiffer(BottleneckMethod):
    name = "pfeiffer"
    Params = PfeifferParams
