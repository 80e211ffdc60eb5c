"""``pfeiffer``: one bottleneck adapter per block, after the FFN output projection (Pfeiffer et
al., 2020): half of Houlsby's adapters for similar quality. Not mergeable (see
:mod:`peftlab.methods.bottleneck`)."""

from __future__ import annotations

from typing import Literal

from peftlab.infra.config_base import PositiveFloat
from peftlab.methods.base import Readme
from peftlab.methods.bottleneck import BottleneckMethod, BottleneckParams


class PfeifferParams(BottleneckParams):
    method: Literal["pfeiffer"] = "pfeiffer"
    #: the pick of the documented search (bench/method_defaults.py; BENCHMARKS.md "Per-method default
    #: learning rates": best held-out loss of 100-step trials on SST-2; test_bench_tools checks it)
    lr: PositiveFloat = 3.16e-3


class Pfeiffer(BottleneckMethod):
    name = "pfeiffer"
    Params = PfeifferParams
    table_order = 340
    readme = Readme(
        on="text",
        trains=("one bottleneck adapter per block, after the FFN output projection (half of Houlsby's); the head; "
                "not mergeable"),
        closed_form="L × (2 d b + b + d) + head",
    )


REGISTERED = (Pfeiffer,)
