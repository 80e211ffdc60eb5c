"""peftlab: compare ways of adapting pretrained models to classification tasks."""

__version__ = "0.1.0"
