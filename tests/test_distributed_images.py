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

import json
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


#: run by 2 torchrun processes, for the image loop (fit_tensors) and the text loop (fit, on accelerate):
#: train with dropout and a checkpoint after every step, then resume from a mid-epoch checkpoint
#: (exactly as saved, and with process 1's generators removed)
RESUME_SCRIPT = '''
import json, shutil, sys
from pathlib import Path
import numpy as np, torch, torch.distributed as dist
from torch import nn
root = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from peftlab.infra.distributed import start
start(cpu=True)  # accelerate's process group (gloo), as peftlab run joins it
rank = dist.get_rank()
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding
from conftest import make_tokenizer, tiny_config, tiny_rows
from peftlab.config import TrainConfig
from peftlab.runners.batching import encode
from peftlab.runners.cached import fit_tensors
from peftlab.runners.checkpoint import complete_checkpoints, load_checkpoint
from peftlab.runners.train import CheckpointPlan, fit, make_accelerator
from peftlab.tasks.base import Split

tcfg = TrainConfig(epochs=2, batch_size=4, seed=0, warmup_ratio=0.0, device="cpu")
g = torch.Generator().manual_seed(0)
x, y = torch.randn(32, 6, generator=g), np.arange(32) % 3
tok = make_tokenizer(root / f"tok{rank}", with_cls=True)
rows, names = tiny_rows(32, 1), ["positive", "negative", "neutral"]
feats = encode(tok, Split(texts=[t for t, _ in rows], labels=np.array([names.index(l) for _, l in rows])), 32)

def plan(directory, model, resume_from):
    torch.manual_seed(100 + rank)  # each process its own dropout stream (as each GPU's generator is)
    return CheckpointPlan(directory, every=1, keep=100, resume=load_checkpoint(resume_from, model) if resume_from else None)

def image_loop(directory, resume_from):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    return model, fit_tensors(model, model, x, y, x, y, 0.05, tcfg, torch.device("cpu"),
                              ckpt=plan(directory, model, resume_from))

def text_loop(directory, resume_from):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert"))  # dropout 0.1
    return fit(model, feats, feats, DataCollatorWithPadding(tok), 1e-3, tcfg, make_accelerator(tcfg), "t", True,
               plan(directory, model, resume_from))

def train(loop, directory, resume_from=None):
    model, outcome = loop(directory, resume_from)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), [e.train_loss for e in outcome.epochs]

out = {}
for name, loop in (("image", image_loop), ("text", text_loop)):
    d = root / name
    full, full_losses = train(loop, d / "full")
    dist.barrier()
    mid = next(c for c in complete_checkpoints(d / "full")
               if json.loads((c / "state.json").read_text())["progress"]["batches_done"] == 2)
    if rank == 0:
        shutil.copytree(mid, d / "bare" / mid.name)
        (d / "bare" / mid.name / "rng.rank1.safetensors").unlink()
    dist.barrier()
    resumed, losses = train(loop, d / "again", mid)
    bare, _ = train(loop, d / "bare-run", d / "bare" / mid.name)
    out[name] = {"files": sorted(p.name for p in mid.iterdir()), "exact": bool(torch.equal(full, resumed)),
                 "losses": [full_losses, losses], "bare_exact": bool(torch.equal(full, bare)),
                 "moved": float((full - bare).abs().max())}
(root / f"rank{rank}.json").write_text(json.dumps(out))
'''


@pytest.mark.parametrize("loop", ["image", "text"])
def test_a_data_parallel_resume_with_dropout_restores_each_processs_generators(resumed_runs: Path, loop: str) -> None:
    """Bit-exact: a resumed 2-process run with dropout ends with the uninterrupted run's weights, because
    process 1 restores its own generators (saved by rank 0 as rng.rank1.safetensors); with that file
    gone it restores rank 0's, draws other masks, and ends elsewhere (so the check can fail)."""
    for rank in (0, 1):
        out = json.loads((resumed_runs / f"rank{rank}.json").read_text())[loop]
        assert "rng.rank1.safetensors" in out["files"] and "rng.safetensors" in out["files"]
        assert out["exact"], out
        # the epoch's running loss sums were saved over both processes: the resumed epoch's loss is the same
        assert out["losses"][1] == pytest.approx(out["losses"][0], abs=1e-9) and len(out["losses"][1]) == 2
        assert not out["bare_exact"] and out["moved"] > 1e-6, out


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch of RESUME_SCRIPT (2 processes) for both loops."""
    import os
    import subprocess
    import sys

    from test_distributed import ROOT, free_port

    root = tmp_path_factory.mktemp("ddp-resume")
    (root / "resume.py").write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(root / "resume.py"), str(root), str(ROOT / "tests")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_each_rank_loads_its_own_generators_and_a_bad_file_is_one_line(tmp_path: Path) -> None:
    """In one process: rank 1 gets the state saved as its file, rank 0 (and rank 2, absent) rank 0's."""
    from torch import nn

    from peftlab.infra.errors import PeftlabError
    from peftlab.runners.checkpoint import Progress, load_checkpoint, restore_rng, rng_payload, save_checkpoint

    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    torch.manual_seed(1)
    other = rng_payload()  # "process 1"'s generators
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path, model, opt, sched, Progress(), keep=2, rank_rngs={1: other})
    draw = {}
    for rank in (0, 1, 2):
        restore_rng(load_checkpoint(path, model, rank=rank))
        draw[rank] = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(draw[1], torch.rand(3))
    torch.manual_seed(0)
    assert torch.equal(draw[0], torch.rand(3)) and torch.equal(draw[2], draw[0])
    (path / "rng.rank1.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PeftlabError, match="rng.rank1.safetensors"):
        load_checkpoint(path, model, rank=1)
