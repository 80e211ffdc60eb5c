"""Image runs under ``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo).

As for text (tests/test_distributed.py, whose launcher and write-audit hook this reuses): two
processes with batch_size 4 must train what one process trains with batch_size 8 (the global
batch), for a method that trains every weight of a tiny ViT on pixels (``full``) and one that
trains a head on cached features (``linear_probe``). 24 training images = 3 global batches of 8,
so no piece is topped up. The tiny ViT has no dropout. Tolerance 1e-4: the all-reduce adds the
per-process gradients in another float order than one process summing the whole batch.

Only rank 0 may touch the output folder: results, the model files, checkpoints and the on-disk
feature cache included (rank 1 computes the features too, but only reads).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny_images import make_tiny_vit, write_image_folder
from torch.utils.data import BatchSampler, SequentialSampler

from peftlab.config import validate_raw
from peftlab.report.collect import load_run_dir
from peftlab.runners.cached import step_batches
from peftlab.runners.data_parallel import rank_positions
from peftlab.runners.experiment import run_experiment

from test_distributed import AUDIT, adapter_tensors, launch, result

METHODS = [{"method": "full", "lr": 1e-3}, {"method": "linear_probe", "lr": 0.1}]


@pytest.mark.parametrize("n, per_process, processes", [(24, 4, 2), (23, 4, 2), (21, 4, 2), (17, 4, 2), (3, 4, 2),
                                                        (10, 3, 3), (14, 3, 3), (7, 2, 4), (1, 1, 2)])
def test_rank_positions_are_accelerates_even_batches(n: int, per_process: int, processes: int) -> None:
    """The image loop shards exactly as accelerate shards the text loop's per-process pieces,
    the top-up of a short last round included."""
    from accelerate.data_loader import BatchSamplerShard

    pieces = BatchSampler(SequentialSampler(range(n)), per_process, drop_last=False)
    for rank in range(processes):
        expected = list(BatchSamplerShard(pieces, processes, rank, even_batches=True))
        assert rank_positions(n, per_process, processes, rank) == expected


def test_one_process_keeps_its_batches() -> None:
    """Without a launcher the loop takes the slices it always took (a lone last example joins the batch before)."""
    assert step_batches(9, 4) == [slice(0, 4), slice(4, 9)]
    assert [b.tolist() for b in step_batches(9, 4, rank=1, processes=2)] == [[4, 5, 6, 7], [3, 4, 5, 6]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-images")
    write_image_folder(root / "imgs", per_class=10)
    make_tiny_vit(root / "vit")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(AUDIT)
    return root


def image_config(root: Path, out: str, batch_size: int) -> dict:
    return {
        "name": "ddp-images", "backbone": str(root / "vit"), "baseline": True,
        "task": {"source": "image_folder", "data_dir": str(root / "imgs"), "eval_fraction": 0.2},
        "methods": METHODS,
        "train": {"epochs": 3, "batch_size": batch_size, "device": "cpu", "num_threads": 1, "checkpoint_every": 2},
        "output_dir": str(root / out),
    }


def test_two_image_processes_equal_one_with_the_global_batch_and_only_rank0_writes(world: Path) -> None:
    two, one = world / "two", world / "one"
    path = world / "two.yaml"
    path.write_text(yaml.safe_dump(image_config(world, "two", 4)))
    done = launch(world, path, two)
    assert done.returncode == 0, done.stderr[-3000:]
    run_experiment(validate_raw(image_config(world, "one", 8)), quiet=True)

    for name in (m["method"] for m in METHODS):
        a, b = result(two, name), result(one, name)
        assert a["status"] == b["status"] == "ok"
        assert a["n_train"] == 24
        assert a["confusion_matrix"] == b["confusion_matrix"]
        assert len(a["epochs"]) == len(b["epochs"]) == 3
        for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
            assert ea["eval_loss"] == pytest.approx(eb["eval_loss"], abs=1e-4)
            assert ea["train_loss"] == pytest.approx(eb["train_loss"], abs=1e-4)
        assert a["epochs"][0]["train_loss"] != pytest.approx(a["epochs"][-1]["train_loss"], abs=1e-3)  # it trained
        ta, tb = adapter_tensors(two, name), adapter_tensors(one, name)
        assert ta.keys() == tb.keys() and ta
        for k in ta:
            if k.endswith("attention.key.bias"):  # its exact gradient is 0 (softmax ignores a shift): only
                continue  # float noise, which Adam scales to lr-sized steps: not comparable
            torch.testing.assert_close(ta[k], tb[k], atol=1e-4, rtol=1e-4, msg=k)

    rank0 = (world / "audit.rank0").read_text().splitlines()
    rank1 = (world / "audit.rank1").read_text().splitlines()
    for written in ("results.json", "full/adapter", "linear_probe/adapter", "checkpoints", ".feature_cache",
                    "comparison.md", "command.json"):
        assert any(written in line for line in rank0), written  # the hook sees every kind of write...
    assert rank1 == [], rank1[:5]  # ...and rank 1 makes none
    assert len(list((two / ".feature_cache").glob("*.safetensors"))) == 1
    # the report re-runs it with the launcher (command.json records it)
    assert load_run_dir(two)[0].command == (f"accelerate launch --multi_gpu --num_processes 2 --mixed_precision no "
                                            f"-m peftlab run {two / 'config.yaml'}")
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp")]
