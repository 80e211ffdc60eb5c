"""Image-classification tasks: four sources, one in-memory form, seeded k-shot sampling.

Images stay in their stored form (file paths, uint8 arrays, PIL images) until the backbone's
preprocessing turns them into one pixel tensor per split (peftlab.images.preprocess). The
split and task classes have the attributes the text ones have (labels, label_names, name...),
so the majority baseline and the metrics are shared with text tasks.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peftlab.config import TaskConfig
from peftlab.infra.errors import PeftlabError
from peftlab.infra.registry import Registry
from peftlab.tasks.hub import hf_split
from peftlab.tasks.sampling import finish_splits

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                        "Bag", "Ankle boot"]
SPLIT_SEED = 0  # hold-out split of a source without an eval split: fixed, independent of train.seed


@dataclass
class ImageSplit:
    images: list[Any]  # path (str), uint8 array (H, W) or (H, W, 3), or PIL image
    labels: np.ndarray  # int64 label ids

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: np.ndarray) -> "ImageSplit":
        return ImageSplit(images=[self.images[i] for i in idx], labels=self.labels[idx])


@dataclass
class ImageTaskData:
    name: str
    label_names: list[str]
    train: ImageSplit
    eval: ImageSplit

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


#: A source returns (train split, eval split or None, label names).
ImageSource = Callable[[TaskConfig], tuple[ImageSplit, ImageSplit | None, list[str]]]
IMAGE_SOURCES: Registry[ImageSource] = Registry("image task source")


def _class_folder(root: Path) -> tuple[ImageSplit, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise PeftlabError(f"task.data_dir {root}: needs one subfolder per class (found {len(classes)})")
    images, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        images += [str(f) for f in files]
        labels += [i] * len(files)
    if not images:
        raise PeftlabError(f"task.data_dir {root}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageSplit(images, np.asarray(labels, dtype=np.int64)), classes


@IMAGE_SOURCES.register("image_folder")
def image_folder(cfg: TaskConfig) -> tuple[ImageSplit, ImageSplit | None, list[str]]:
    """``root/<class>/*.jpg``; or ``root/train/<class>/`` with ``root/{val,validation,test,eval}/<class>/``."""
    root = Path(cfg.data_dir or "")
    if not root.is_dir():
        raise PeftlabError(f"task.data_dir {root}: not a folder")
    if (root / "train").is_dir():
        train, names = _class_folder(root / "train")
        for name in ("val", "validation", "test", "eval"):
            if (root / name).is_dir():
                ev, ev_names = _class_folder(root / name)
                if ev_names != names:
                    raise PeftlabError(f"task.data_dir {root}: {name}/ classes {ev_names} differ from train/ {names}")
                return train, ev, names
        return train, None, names
    train, names = _class_folder(root)
    return train, None, names


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not: magic, dims, then uint8 data."""
    if not path.is_file() and path.with_suffix("").is_file():
        path = path.with_suffix("")
    if not path.is_file():
        raise PeftlabError(f"Fashion-MNIST file not found: {path} (apt-get install dataset-fashion-mnist)")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise PeftlabError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise PeftlabError(f"{path}: truncated IDX file")
    return data.reshape(dims)


@IMAGE_SOURCES.register("fashion_mnist")
def fashion_mnist(cfg: TaskConfig) -> tuple[ImageSplit, ImageSplit | None, list[str]]:
    """60k/10k 28x28 grey images from the Debian package ``dataset-fashion-mnist``."""
    root = Path(cfg.data_dir or FASHION_MNIST_DIR)

    def split(prefix: str) -> ImageSplit:
        x = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        y = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        if len(x) != len(y):
            raise PeftlabError(f"{root}: {prefix} images and labels differ in count")
        return ImageSplit(list(x), y)

    return split("train"), split("t10k"), list(FASHION_MNIST_LABELS)


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles: allow only what they contain (dicts, bytes, numpy arrays)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise PeftlabError(f"CIFAR batch refers to {module}.{name}: not a plain data batch, refused")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise PeftlabError(f"CIFAR-10 batch not found: {path}")
    try:
        data = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise PeftlabError(f"{path}: cannot read as a CIFAR batch ({exc})") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


@IMAGE_SOURCES.register("cifar10")
def cifar10(cfg: TaskConfig) -> tuple[ImageSplit, ImageSplit | None, list[str]]:
    """The ``cifar-10-batches-py`` folder: data_batch_1..5, test_batch, batches.meta."""
    root = Path(cfg.data_dir or "")

    def split(names: list[str]) -> ImageSplit:
        batches = [_cifar_batch(root / n) for n in names]
        x = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
        y = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
        return ImageSplit(list(x.transpose(0, 2, 3, 1)), y)

    train_names = sorted(p.name for p in root.glob("data_batch_*")) if root.is_dir() else []
    if not train_names:
        raise PeftlabError(f"task.data_dir {root}: no data_batch_* files (the cifar-10-batches-py folder)")
    meta = _cifar_batch(root / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    return split(train_names), split(["test_batch"]), names


@IMAGE_SOURCES.register("hf_image")
def hf_image(cfg: TaskConfig) -> tuple[ImageSplit, ImageSplit | None, list[str]]:
    """A Hugging Face dataset with an image column and a ClassLabel (food101, Stanford dogs...)."""
    import datasets

    local = {"data_dir": cfg.data_dir} if cfg.data_dir else {}  # e.g. hf_id "imagefolder"
    train, ev = hf_split(cfg, cfg.train_split, **local), hf_split(cfg, cfg.eval_split, **local)
    for col, field in ((cfg.image_column, "image_column"), (cfg.label_column, "label_column")):
        if col not in train.column_names:
            raise PeftlabError(f"config error: task.{field}: column {col!r} not in {cfg.hf_id} "
                               f"(columns: {', '.join(train.column_names)})")
    feature = train.features[cfg.label_column]
    names = cfg.label_names or (list(feature.names) if isinstance(feature, datasets.ClassLabel) else None)
    if names is None:
        raise PeftlabError(f"task.label_names: {cfg.hf_id} column {cfg.label_column!r} is no ClassLabel; list the names")

    def to_split(ds: Any) -> ImageSplit:
        return ImageSplit(list(ds[cfg.image_column]), np.asarray(ds[cfg.label_column], dtype=np.int64))

    return to_split(train), to_split(ev), names


def load_image_task(cfg: TaskConfig, seed: int) -> ImageTaskData:
    """Load, hold out an eval split if the source has none, then k-shot / n_train / n_eval (seeded)."""
    train, ev, names = IMAGE_SOURCES.get(cfg.source)(cfg)
    if cfg.label_names is not None and cfg.source != "hf_image":
        if len(cfg.label_names) != len(names):
            raise PeftlabError(f"config error: task.label_names has {len(cfg.label_names)} names, the data {len(names)} classes")
        names = list(cfg.label_names)  # display names for the source's classes, in its order
    train, ev = finish_splits(train, ev, cfg, seed, SPLIT_SEED, cfg.k_shot)
    return ImageTaskData(name=cfg.display_name, label_names=list(names), train=train, eval=ev)


def check_image_task(cfg: TaskConfig) -> None:
    """For ``validate``: local sources load (cheap: no decoding); hub datasets need the network."""
    if cfg.source != "hf_image":
        IMAGE_SOURCES.get(cfg.source)(cfg)
