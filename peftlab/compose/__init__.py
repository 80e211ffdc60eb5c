"""Arithmetic on trained modules (LoRA and (IA)^3 adapters), after Zhang et al. 2023.

- :mod:`~peftlab.compose.expr`: the expression language (``0.5*pos + 0.5*neg``), parsed safely.
- :mod:`~peftlab.compose.adapter`: adapters as data (peft config + safetensors + fingerprint).
- :mod:`~peftlab.compose.ops`: the pure arithmetic per method and mode, and head policies
  (``add``, ``scale``, ``negate``, ``analogy``, ``combine``).
- :mod:`~peftlab.compose.merge`: non-linear merges of task vectors (``--combine ties``, DARE, ...).
- :mod:`~peftlab.compose.validate`: the refusals (methods, base models, targets, ranks).
- :mod:`~peftlab.compose.core`: expression + adapters -> composed adapter (``compose``).
- :mod:`~peftlab.compose.model`: put it on the base model: evaluate, or merge and save.
- :mod:`~peftlab.compose.sweep`: choose a coefficient on a validation split.
- :mod:`~peftlab.compose.scenarios` / ``scenario_run``: the shipped scenarios.

Kept import-free: the CLI imports this package for every command.
"""
