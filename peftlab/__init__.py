"""peftlab: compare ways of adapting pretrained models to classification tasks."""

__version__ = "0.1.0"

from peftlab.backbones.hub_kernels import install as _refuse_unrequested_hub_kernels

_refuse_unrequested_hub_kernels()
