"""Text-classification tasks: load a source, map labels, subsample, and hand back two splits."""

from peftlab.tasks.base import Split, TaskData
from peftlab.tasks.loaders import check_task, load_task

__all__ = ["Split", "TaskData", "check_task", "load_task"]
