"""Guards against the classic mistakes of a comparison, caught before or while a method runs.

* a backbone whose encoder weights were newly initialised (a checkpoint that does not match the
  architecture): every number trained on it is meaningless, so the run warns loudly on stderr
  and the result carries the ``backbone_newly_initialised`` flag;
* a method/task mismatch (a peft ``task_type`` other than sequence classification): refused in
  the config with one line naming the field;
* evaluation examples that also occur in the training split: warned with the count and recorded
  in every result (``details.train_eval_overlap``), since they inflate accuracy.

The checks are pure functions; the runner decides what to print and where to record it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from peftlab.infra.errors import PeftlabError
from peftlab.infra.distributed import is_main

if TYPE_CHECKING:
    from peftlab.tasks.base import Split

#: the result flag for a backbone loaded with encoder weights it did not find in the checkpoint
NEWLY_INITIALISED = "backbone_newly_initialised"
#: peft task types; only sequence classification matches what peftlab trains
SEQ_CLS = "SEQ_CLS"


def newly_initialised(loading_info: dict[str, Any], head_modules: Iterable[str]) -> list[str]:
    """Weights transformers had to initialise, beyond the expected new classification head.

    ``loading_info`` is what ``from_pretrained(..., output_loading_info=True)`` returns: missing
    keys (not in the checkpoint) and mismatched keys (wrong shape, re-created because of
    ``ignore_mismatched_sizes``; entries are names or ``(name, old, new)`` tuples).
    """
    heads = tuple(head_modules)
    names = set(loading_info.get("missing_keys") or [])
    for m in loading_info.get("mismatched_keys") or []:
        names.add(m[0] if isinstance(m, (tuple, list)) else m)
    return sorted(n for n in names if not any(n == h or n.startswith(h + ".") for h in heads))


def newly_initialised_warning(backbone: str, names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"WARNING: backbone {backbone!r}: {len(names)} weights beyond the classification head were NOT "
            f"in the checkpoint and are random ({shown}); results are flagged {NEWLY_INITIALISED}")


def _inputs(split: "Split") -> list[tuple[str, str | None]]:
    """(text, pair) per example; empty for splits that hold no texts (image splits are not checked yet)."""
    texts = getattr(split, "texts", None)
    if texts is None:
        return []
    pairs = split.pairs if split.pairs is not None else [None] * len(texts)
    return list(zip(texts, pairs))


def overlap_count(train: "Split", evalset: "Split") -> int:
    """How many evaluation examples have an input (text, or text pair) identical to a training one."""
    seen = set(_inputs(train))
    return sum(1 for x in _inputs(evalset) if x in seen)


def overlap_warning(n: int, n_eval: int) -> str:
    return (f"WARNING: {n} of {n_eval} evaluation examples also occur in the training split "
            f"(identical inputs); accuracy is inflated")


def check_task_type(method: dict[str, Any], where: str) -> dict[str, Any]:
    """Refuse a peft ``task_type`` other than sequence classification in a method's parameters.

    A ``SEQ_CLS`` entry is accepted (and dropped: it is what every method uses anyway); anything
    else (``CAUSAL_LM``, ``SEQ_2_SEQ_LM``, ...) is a copy-pasted config from another kind of run.
    """
    if "task_type" not in method:
        return method
    value = method["task_type"]
    if str(value).upper() != SEQ_CLS:
        raise PeftlabError(f"config error: {where}.task_type: {value!r} does not match this run; peftlab trains "
                           f"sequence classification (task_type {SEQ_CLS}); remove the key")
    return {k: v for k, v in method.items() if k != "task_type"}


def warn(msg: str) -> None:
    """Guards print whether or not ``--quiet`` is on: they are about the validity of the numbers.
    Under ``accelerate launch`` only rank 0 prints them (every process would find the same)."""
    if is_main():
        print(msg, file=sys.stderr, flush=True)
