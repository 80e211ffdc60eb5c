"""Load any task source into :class:`TaskData` with one set of column/label rules."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftlab.config import TaskConfig
from peftlab.infra.errors import PeftlabError, first_line
from peftlab.infra.registry import Registry
from peftlab.tasks.base import Split, TaskData, drop_eval_duplicates
from peftlab.tasks.builtin import BUILTIN_TASKS
from peftlab.tasks.hub import hf_split
from peftlab.tasks.images import check_image_task
from peftlab.tasks.sampling import finish_splits, hold_out

#: A source returns (train frame, eval frame or None, label names it knows or None).
Frames = tuple[pd.DataFrame, pd.DataFrame | None, list[str] | None]
SOURCES: Registry[Callable[[TaskConfig], Frames]] = Registry("task source")

#: the seed of the hold-out split when a source has no eval split: fixed, so it never varies
SPLIT_SEED = 0


def _read_file(kind: str, path: str, nrows: int | None = None) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise PeftlabError(f"data file not found: {p}")
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(p, sep="," if kind == "csv" else "\t", nrows=nrows, dtype=object,
                               keep_default_na=False, encoding="utf-8")
        if kind == "jsonl":
            return pd.read_json(p, lines=True, nrows=nrows, dtype=False, encoding="utf-8")
        frame = pd.read_parquet(p)
        return frame.head(nrows) if nrows else frame
    except UnicodeDecodeError:
        raise PeftlabError(f"data file {p}: not UTF-8 text") from None
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PeftlabError(f"data file {p}: cannot parse as {kind} ({first_line(exc)})") from None


def _file_source(kind: str) -> Callable[[TaskConfig], Frames]:
    def load(cfg: TaskConfig) -> Frames:
        assert cfg.train_file is not None
        train = _read_file(kind, cfg.train_file)
        ev = _read_file(kind, cfg.eval_file) if cfg.eval_file else None
        return train, ev, None

    return load


for _kind in ("csv", "tsv", "jsonl", "parquet"):
    SOURCES.add(_kind, _file_source(_kind))


@SOURCES.register("builtin")
def _builtin(cfg: TaskConfig) -> Frames:
    train, ev, names = BUILTIN_TASKS.get(cfg.name or "")()
    return train, ev, names


@SOURCES.register("hf")
def _hf(cfg: TaskConfig) -> Frames:
    import datasets

    train = hf_split(cfg, cfg.train_split)
    ev = hf_split(cfg, cfg.eval_split)
    feature = train.features.get(cfg.label_column)
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return train.to_pandas(), ev.to_pandas(), names


def _column(frame: pd.DataFrame, col: str, field: str, where: str) -> list[Any]:
    if col not in frame.columns:
        raise PeftlabError(
            f"config error: task.{field}: column {col!r} not in {where} (columns: {', '.join(map(str, frame.columns))})"
        )
    return frame[col].tolist()


#: longer than any document a classifier is fed: such a "text" is a broken file (an unclosed quote
#: swallowing the rows after it), not data, and tokenising it would take minutes before truncation
MAX_TEXT_CHARS = 1_000_000


def _texts(values: list[Any], col: str, where: str) -> list[str]:
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            what = "empty" if isinstance(v, str) else f"not text ({v!r})"
            raise PeftlabError(f"{where}: column {col!r} row {i + 1} is {what}")
        if len(v) > MAX_TEXT_CHARS:
            raise PeftlabError(f"{where}: column {col!r} row {i + 1} is {len(v):,} characters long "
                               f"(limit {MAX_TEXT_CHARS:,}; an unclosed quote?)")
    return values


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _label_ids(values: list[Any], names: list[str], where: str, drop_negative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Map raw labels to ids; returns (ids, kept row mask).

    A string label is looked up in ``names``; an integer (or a digit string that is no name) is an
    index into ``names``.
    Anything else is an error naming the row, never silently dropped (except negative integer
    labels where ``drop_negative``: GLUE-style unlabelled rows).
    """
    index = {n: i for i, n in enumerate(names)}
    ids, keep = [], []
    for row, v in enumerate(values):
        if _is_missing(v):
            raise PeftlabError(f"{where}: row {row + 1} has no label")
        as_int = _as_int(v)  # CSV cells are strings: "1" may be an index
        if isinstance(v, str) and v in index:
            ids.append(index[v])
        elif as_int is not None and 0 <= as_int < len(names):
            ids.append(as_int)
        elif as_int is not None and as_int < 0 and drop_negative:
            ids.append(-1)
        else:
            raise PeftlabError(f"{where}: row {row + 1} label {v!r} is not in the label set {names}")
        keep.append(ids[-1] >= 0)
    return np.asarray(ids, dtype=np.int64), np.asarray(keep, dtype=bool)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        try:  # isdigit() also accepts digits int() refuses, such as "¹"
            return int(v)
        except ValueError:
            return None
    return None


def _int_names(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def _infer_names(values: list[Any]) -> list[str]:
    if not values:
        raise PeftlabError("train data: no rows")
    ints = [_as_int(v) for v in values]
    if all(i is not None for i in ints):
        top = max(i for i in ints if i is not None)
        return _int_names(top + 1)
    return sorted({str(v) for v in values if not _is_missing(v)})


def _split(frame: pd.DataFrame, cfg: TaskConfig, names: list[str], where: str, drop_negative: bool) -> Split:
    if len(frame) == 0:
        raise PeftlabError(f"{where}: no rows")
    labels, keep = _label_ids(_column(frame, cfg.label_column, "label_column", where), names, where, drop_negative)
    texts = _column(frame, cfg.text_column, "text_column", where)
    pairs = _column(frame, cfg.text_pair_column, "text_pair_column", where) if cfg.text_pair_column else None
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        raise PeftlabError(f"{where}: no labelled rows")
    texts = _texts([texts[i] for i in idx], cfg.text_column, where)
    if pairs is not None:
        pairs = _texts([pairs[i] for i in idx], cfg.text_pair_column or "", where)
    return Split(texts=texts, labels=labels[idx], pairs=pairs)


def load_task(cfg: TaskConfig, seed: int) -> TaskData:
    """Load, map labels, hold out an eval split if the source has none, subsample (seeded)."""
    train_df, eval_df, source_names = SOURCES.get(cfg.source)(cfg)
    drop_negative = cfg.source == "hf"  # GLUE-style unlabelled rows carry label -1
    names = cfg.label_names or source_names or _infer_names(_column(train_df, cfg.label_column, "label_column", "train data"))
    train = _split(train_df, cfg, names, "train data", drop_negative)
    ev = None if eval_df is None else _split(eval_df, cfg, names, "eval data", drop_negative)
    dropped = 0
    if cfg.source == "builtin":  # our own data: no eval example the training split already holds
        if ev is None:
            train, ev = hold_out(train, cfg.eval_fraction, SPLIT_SEED)
        ev, dropped = drop_eval_duplicates(train, ev)
    train, ev = finish_splits(train, ev, cfg, seed, SPLIT_SEED)
    return TaskData(name=cfg.display_name, label_names=list(names), train=train, eval=ev, eval_duplicates_dropped=dropped)


def check_task(cfg: TaskConfig) -> None:
    """Checks for ``validate``: files exist, parse, have the named columns, and every row is usable.

    Local files are read whole (cheap next to any training): an empty split, an empty text or a
    label outside the label set is reported here rather than after the first model has loaded.
    """
    if cfg.modality == "image":
        return check_image_task(cfg)
    if cfg.source == "builtin":
        BUILTIN_TASKS.get(cfg.name or "")
        return
    if cfg.source == "hf":
        return  # needs the network; checked when loaded
    cols = [("text_column", cfg.text_column), ("label_column", cfg.label_column)]
    if cfg.text_pair_column:
        cols.append(("text_pair_column", cfg.text_pair_column))
    for path in filter(None, [cfg.train_file, cfg.eval_file]):
        head = _read_file(cfg.source, path, nrows=5)
        for field, col in cols:
            _column(head, col, field, path)
    load_task(cfg, seed=0)


__all__ = ["SOURCES", "load_task", "check_task"]
