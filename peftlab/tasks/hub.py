"""One split of a Hugging Face dataset, for text tasks (loaders.py) and image tasks (images.py) alike.

Its own module so that both loaders can use it while loaders.py also hands image tasks to images.py.
"""

from __future__ import annotations

from typing import Any

from peftlab.config import TaskConfig
from peftlab.infra.errors import PeftlabError, first_line


def hf_split(cfg: TaskConfig, name: str, **kwargs: Any) -> Any:
    """One split of the Hugging Face dataset ``cfg.hf_id`` (text or image tasks)."""
    import datasets  # heavy (pyarrow): imported only when a task reads the hub

    try:
        return datasets.load_dataset(cfg.hf_id, cfg.hf_config, split=name, **kwargs)
    except Exception as exc:  # network, missing split, unknown id: all user-fixable
        raise PeftlabError(f"task.hf_id {cfg.hf_id!r} split {name!r}: cannot load ({first_line(exc)})") from None
