"""Image runs resume like text runs: a run interrupted at a checkpoint and run again ends with the
uninterrupted run's metrics, finished rows (trained, zero-shot) are kept, not re-run, and the same
config twice gives the same numbers.

Backbones cover every kind of state a checkpoint must carry: a tiny ViT (LoRA with dropout: the
random generators; full; a cached-feature probe), a tiny ResNet (full fine-tuning moves batch-norm
statistics, which are buffers, not parameters) and a tiny CLIP (CoOp's context; zero-shot).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from interrupts import run_until_checkpoint
from tiny_images import make_tiny_clip, make_tiny_vit, write_image_folder, write_preprocessor

from peftlab.config import validate_raw
from peftlab.runners import cached
from peftlab.runners import image_experiment as image_mod
from peftlab.runners.checkpoint import complete_checkpoints
from peftlab.runners.experiment import run_experiment

#: everything of a result that training determines (timings and environment excluded)
METRIC_KEYS = ("accuracy", "macro_f1", "per_class", "confusion_matrix", "epochs", "flags", "params", "status")


def make_tiny_resnet(path: Path) -> str:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    conf = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                        num_labels=3)
    ResNetForImageClassification(conf).save_pretrained(str(path))
    write_preprocessor(path, 32)
    return str(path)


BACKBONES = {"vit": make_tiny_vit, "resnet": make_tiny_resnet, "clip": make_tiny_clip}
METHODS = {
    "vit": [{"method": "linear_probe", "lr": 0.1}, {"method": "full", "lr": 1e-3},
            {"method": "lora", "r": 2, "lr": 1e-2, "dropout": 0.1}],
    "resnet": [{"method": "linear_probe", "lr": 0.1}, {"method": "full", "lr": 1e-2}],
    "clip": [{"method": "clip_zeroshot", "templates": ["a photo of a {} ."]},
             {"method": "coop", "lr": 0.05, "n_ctx": 2, "ctx_init": None}],
}
#: the row interrupted in each config (the last one: every earlier row has finished by then)
INTERRUPTED = {"vit": "lora", "resnet": "full", "clip": "coop"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume-images")
    write_image_folder(root / "imgs", per_class=6)
    for name, make in BACKBONES.items():
        make(root / name)
    return root


def raw_config(world: Path, kind: str, out: Path) -> dict:
    return {
        "name": f"resume-{kind}",
        "backbone": str(world / kind),
        "task": {"source": "image_folder", "data_dir": str(world / "imgs"), "eval_fraction": 0.25},
        "methods": METHODS[kind],
        "train": {"epochs": 3, "batch_size": 4, "checkpoint_every": 2, "num_threads": 1, "device": "cpu"},
        "output_dir": str(out),
    }


def metrics(run_dir: Path, name: str) -> dict:
    r = json.loads((run_dir / name / "results.json").read_text())
    return {k: r[k] for k in METRIC_KEYS}


@pytest.fixture(scope="module")
def references(world: Path) -> dict[str, Path]:
    out = {}
    for kind in BACKBONES:
        run_experiment(validate_raw(raw_config(world, kind, world / f"ref-{kind}")), quiet=True)
        out[kind] = world / f"ref-{kind}"
    return out


def rows_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The labels of the rows that actually run from now on (trained or evaluated)."""
    ran: list[str] = []
    real = image_mod._run

    def spy(ctx, cfg, params, *args, **kwargs):
        ran.append(params.label)
        return real(ctx, cfg, params, *args, **kwargs)

    monkeypatch.setattr(image_mod, "_run", spy)
    return ran


@pytest.mark.parametrize("kind,stop_after", [("vit", 2), ("vit", 3), ("resnet", 1), ("clip", 3)])
def test_interrupted_image_run_resumes_to_the_uninterrupted_metrics(world, references, tmp_path, monkeypatch,
                                                                    kind, stop_after):
    # 14 train images, batches of 4: 4 steps an epoch; every 2 steps: saves 1 mid-epoch 1, 2 at its end, 3 mid-epoch 2
    cfg = validate_raw(raw_config(world, kind, tmp_path / "run"))
    target = INTERRUPTED[kind]
    out = run_until_checkpoint(monkeypatch, cached, cfg, target, stop_after)
    finished = [m.get("name", m["method"]) for m in METHODS[kind] if m.get("name", m["method"]) != target]
    before = {m: (out / m / "results.json").read_text() for m in finished}
    ran = rows_run(monkeypatch)
    run_experiment(cfg, quiet=True)  # the same config on the same folder: continues
    assert ran == [target]  # finished rows (zero-shot and trained) are kept, not run again
    assert {m: (out / m / "results.json").read_text() for m in finished} == before
    for m in [*finished, target]:
        assert metrics(out, m) == metrics(references[kind], m), m
    assert metrics(out, target)["status"] == "ok"
    assert not complete_checkpoints(out / target)  # cleared once the method's files are saved
    assert (out / "comparison.md").is_file()


def test_fresh_flag_reruns_every_image_row(world, references, tmp_path, monkeypatch):
    cfg = validate_raw(raw_config(world, "clip", tmp_path / "run"))
    run_experiment(cfg, quiet=True)
    ran = rows_run(monkeypatch)
    run_experiment(cfg, quiet=True, resume="resume")
    assert ran == []  # --resume on a finished run: nothing left to do
    run_experiment(cfg, quiet=True, resume="fresh")
    assert ran == ["clip_zeroshot", "coop"]


def test_same_image_config_twice_gives_identical_metrics(world, references, tmp_path):
    for kind in ("vit", "resnet"):
        run_experiment(validate_raw(raw_config(world, kind, tmp_path / kind)), quiet=True)
        for m in METHODS[kind]:
            name = m.get("name", m["method"])
            assert metrics(tmp_path / kind, name) == metrics(references[kind], name), (kind, name)


def test_batch_norm_statistics_are_checkpointed(world, references):
    """The ResNet's full fine-tuning moves running statistics: without them in the checkpoint the
    resumed run above could not match; here, that they really moved (so the check has teeth)."""
    from safetensors.torch import load_file
    from transformers import ResNetForImageClassification

    trained = load_file(str(references["resnet"] / "full" / "adapter" / "model.safetensors"))
    fresh = ResNetForImageClassification.from_pretrained(str(world / "resnet")).state_dict()
    moved = [k for k in trained if k.endswith("running_mean") and not torch.equal(trained[k], fresh[k])]
    assert moved


def test_image_rows_go_to_trackers_like_text_rows(world, tmp_path):
    """Image rows share the text rows' bookkeeping (runners.rows.guarded): asked-for trackers
    are checked before anything runs, and each finished row is logged."""
    from peftlab.infra.errors import PeftlabError

    raw = raw_config(world, "clip", tmp_path / "run")
    raw["train"]["log_to"] = ["mlflow"]  # not installed here
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(PeftlabError, match="mlflow"):
            run_experiment(validate_raw(raw), quiet=True)
        assert not (tmp_path / "run").exists()
    if importlib.util.find_spec("tensorboard") is not None:
        raw["train"]["log_to"] = ["tensorboard"]
        run_experiment(validate_raw(raw), quiet=True)
        assert list((tmp_path / "run" / "tensorboard" / "coop").glob("events.out.tfevents.*"))


def test_nan_loss_stops_an_image_method_and_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    real_fit = image_mod._fit

    def diverging_fit(ctx, built, params, plan):
        forward, steps = built.forward, {"n": 0}

        def forward_nan_from_step_4(x):
            out = forward(x)
            if built.trainable.training:
                steps["n"] += 1
                if steps["n"] >= 4:
                    return out * float("nan")
            return out

        built.forward = forward_nan_from_step_4
        return real_fit(ctx, built, params, plan)

    monkeypatch.setattr(image_mod, "_fit", diverging_fit)
    raw = raw_config(world, "vit", tmp_path / "run")
    raw["methods"] = [METHODS["vit"][2]]
    raw["train"]["checkpoint_every"] = 1
    r = run_experiment(validate_raw(raw), quiet=True)[-1]
    assert r.status == "failed" and r.flags == ["nan_loss"] and "checkpoint" in (r.error or "")
    assert [p.name for p in complete_checkpoints(tmp_path / "run" / "lora")][-1] == "step-00000003"
    assert not (tmp_path / "run" / "lora" / "adapter").exists()  # nothing saved from a diverged model
