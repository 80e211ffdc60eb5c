"""The bad-input corpus: every case ends with exit code 2, one line naming the problem, no traceback,
and nothing left behind that looks like a finished run.

Each case is a small function that turns a valid tiny setup (config, CSV data, a trained LoRA run)
into one broken input and returns the CLI arguments; the expected words say what the line must name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import run_cli, tiny_rows, write_tiny_csvs


class Setup:
    """A valid configuration and its data in ``root``, plus helpers to break one thing at a time."""

    def __init__(self, root: Path, backbone: str, trained: Path, image_run: Path | None = None) -> None:
        self.root, self.backbone, self.trained, self.image_run = root, backbone, trained, image_run
        self.train, self.eval = write_tiny_csvs(root, 24, 12)
        self.out = root / "run"

    def csv(self, name: str, text: str | bytes) -> Path:
        p = self.root / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return p

    def raw(self) -> dict:
        return {
            "name": "bad",
            "backbone": self.backbone,
            "task": {"source": "csv", "train_file": str(self.train), "eval_file": str(self.eval)},
            "methods": [{"method": "lora", "r": 2, "lr": 1e-2}],
            "train": {"epochs": 1, "batch_size": 8, "max_length": 16},
            "output_dir": str(self.out),
        }

    def config(self, mutate: Callable[[dict], None] | None = None, text: str | bytes | None = None) -> str:
        path = self.root / "c.yaml"
        if text is None:
            raw = self.raw()
            if mutate:
                mutate(raw)
            text = yaml.safe_dump(raw)
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return str(path)

    def data(self, train_text: str | bytes) -> str:
        self.csv("train.csv", train_text)
        return self.config()

    def copy_run(self) -> Path:
        dst = self.root / "copied"
        shutil.copytree(self.trained, dst)
        return dst / "lora"

    def copy_image_run(self, method: str) -> Path:
        assert self.image_run is not None
        dst = self.root / "copied_images"
        shutil.copytree(self.image_run, dst)
        return dst / method

    def image(self) -> str:
        assert self.image_run is not None
        return str(next((self.image_run.parent / "imgs").rglob("*.png")))


def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value
    return mutate


def _validate(s: Setup, mutate=None) -> list[str]:
    return ["validate", s.config(mutate)]


def _other_base(s: Setup) -> list[str]:
    mdir = s.copy_run()
    cfg = yaml.safe_load((mdir.parent / "config.yaml").read_text())
    other = s.root / "other_base"
    from transformers import AutoModelForSequenceClassification
    import torch

    shutil.copytree(cfg["backbone"]["name"], other)
    torch.manual_seed(123)  # same architecture, other weights
    model = AutoModelForSequenceClassification.from_config(
        AutoModelForSequenceClassification.from_pretrained(str(other)).config)
    model.save_pretrained(str(other))
    cfg["backbone"]["name"] = str(other)
    (mdir.parent / "config.yaml").write_text(yaml.safe_dump(cfg))
    return ["predict", str(mdir), "good day"]


def _truncated_adapter(s: Setup) -> list[str]:
    mdir = s.copy_run()
    f = mdir / "adapter" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return ["predict", str(mdir), "good day"]


def _newer_schema(s: Setup) -> list[str]:
    mdir = s.copy_run()
    r = json.loads((mdir / "results.json").read_text())
    r["schema_version"] = 99
    (mdir / "results.json").write_text(json.dumps(r))
    return ["predict", str(mdir), "good day"]


def _undecodable_image(s: Setup) -> list[str]:
    from PIL import Image

    for cls in ("cat", "dog"):
        (s.root / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(s.root / "imgs" / cls / f"{i}.png")
    (s.root / "imgs" / "dog" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    raw = s.raw()
    raw["task"] = {"source": "image_folder", "data_dir": str(s.root / "imgs")}
    raw["backbone"] = {"name": "efficientnet-lite0"}
    raw["methods"] = [{"method": "linear_probe", "lr": 1e-2}]
    return ["run", s.config(text=yaml.safe_dump(raw)), "-q"]


def _truncated(mdir: Path, name: str) -> Path:
    f = mdir / "adapter" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return mdir


def _image_newer_schema(s: Setup) -> list[str]:
    mdir = s.copy_image_run("lora")
    r = json.loads((mdir / "results.json").read_text())
    (mdir / "results.json").write_text(json.dumps({**r, "schema_version": 99}))
    return ["predict", str(mdir), s.image()]


def _report_newer_schema(s: Setup) -> list[str]:
    mdir = s.copy_run()
    r = json.loads((mdir / "results.json").read_text())
    (mdir / "results.json").write_text(json.dumps({**r, "schema_version": 99}))
    return ["report", str(mdir.parent), "--out", str(s.out)]


def _undecodable_image_predict(s: Setup) -> list[str]:
    bad = s.root / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return ["predict", str(s.copy_image_run("lora")), str(bad)]


def _compose_onto_other_base(s: Setup) -> list[str]:
    args = _other_base(s)  # a base of the same architecture with other weights, at s.root/other_base
    return ["compose", "a", "-a", f"a={args[1]}", "--merge", "--base", str(s.root / "other_base"), "--out", str(s.out)]


HEADER = "text,label\n"
GOOD = "".join(f"{t},{l}\n" for t, l in tiny_rows(24, 1))

#: id -> (build the CLI arguments from a Setup, words the error line must contain)
CASES: dict[str, tuple[Callable[[Setup], list[str]], str]] = {
    # the YAML file itself
    "malformed_yaml": (lambda s: ["validate", s.config(text="name: [unclosed\n")], "YAML"),
    "yaml_not_a_mapping": (lambda s: ["validate", s.config(text="- just\n- a list\n")], "mapping"),
    "empty_yaml": (lambda s: ["validate", s.config(text="")], "empty"),
    "yaml_not_utf8": (lambda s: ["validate", s.config(text=b"name: \xff\xfe\n")], "UTF-8"),
    "config_missing": (lambda s: ["validate", str(s.root / "nope.yaml")], "nope.yaml"),
    "config_is_a_folder": (lambda s: ["validate", str(s.root)], "is a folder"),
    # schema
    "unknown_top_key": (lambda s: _validate(s, _set("colour", "blue")), "colour"),
    "unknown_train_key": (lambda s: _validate(s, _set("train.epoch", 3)), "train.epoch"),
    "unknown_method": (lambda s: _validate(s, _set("methods.0", {"method": "lorra", "lr": 1e-3})), "lorra"),
    "unknown_method_key": (lambda s: _validate(s, _set("methods.0.rank", 4)), "rank"),
    "epochs_wrong_type": (lambda s: _validate(s, _set("train.epochs", "three")), "train.epochs"),
    "epochs_zero": (lambda s: _validate(s, _set("train.epochs", 0)), "train.epochs"),
    "batch_size_zero": (lambda s: _validate(s, _set("train.batch_size", 0)), "train.batch_size"),
    "max_length_tiny": (lambda s: _validate(s, _set("train.max_length", 2)), "train.max_length"),
    "seed_negative": (lambda s: _validate(s, _set("train.seed", -1)), "train.seed"),
    "threads_zero": (lambda s: _validate(s, _set("train.num_threads", 0)), "train.num_threads"),
    "lr_negative": (lambda s: _validate(s, _set("methods.0.lr", -1e-3)), "lr"),
    "lr_nan": (lambda s: _validate(s, _set("methods.0.lr", float("nan"))), "lr"),
    "lr_inf": (lambda s: _validate(s, _set("methods.0.lr", float("inf"))), "lr"),
    "lora_rank_zero": (lambda s: _validate(s, _set("methods.0.r", 0)), "r"),
    "bottleneck_zero": (lambda s: _validate(s, _set("methods.0", {"method": "houlsby", "bottleneck_size": 0})),
                        "bottleneck_size"),
    "dropout_one": (lambda s: _validate(s, _set("methods.0.dropout", 1.0)), "dropout"),
    "duplicate_method_names": (lambda s: _validate(s, _set("methods", [{"method": "lora"}, {"method": "lora"}])),
                               "lora"),
    "no_methods": (lambda s: _validate(s, _set("methods", [])), "methods"),
    "bad_run_name": (lambda s: _validate(s, _set("name", "a/b")), "name"),
    "trust_remote_code_not_bool": (lambda s: _validate(s, _set("backbone", {"name": "x", "trust_remote_code": "maybe"})),
                                   "trust_remote_code"),
    # overrides
    "override_without_equals": (lambda s: ["validate", s.config(), "train.epochs"], "train.epochs"),
    "override_unknown_key": (lambda s: ["validate", s.config(), "train.epoch=2"], "train.epoch"),
    "override_bad_index": (lambda s: ["validate", s.config(), "methods.7.lr=1"], "methods"),
    # task and data
    "unknown_source": (lambda s: _validate(s, _set("task.source", "ftp")), "task.source"),
    "unknown_builtin_task": (lambda s: _validate(s, _set("task", {"source": "builtin", "name": "imdb"})), "imdb"),
    "hf_without_id": (lambda s: _validate(s, _set("task", {"source": "hf"})), "hf_id"),
    "train_file_missing": (lambda s: _validate(s, _set("task.train_file", str(s.root / "gone.csv"))), "gone.csv"),
    "missing_text_column": (lambda s: _validate(s, _set("task.text_column", "body")), "body"),
    "missing_label_column": (lambda s: _validate(s, _set("task.label_column", "stars")), "stars"),
    "label_outside_label_set": (lambda s: _validate(s, _set("task.label_names", ["positive", "negative"])), "neutral"),
    "one_label_name": (lambda s: _validate(s, _set("task.label_names", ["positive"])), "label_names"),
    "eval_fraction_above_one": (lambda s: _validate(s, _set("task.eval_fraction", 1.5)), "eval_fraction"),
    "n_train_one": (lambda s: _validate(s, _set("task.n_train", 1)), "n_train"),
    "empty_train_split": (lambda s: ["validate", s.data(HEADER)], "no rows"),
    "empty_eval_split": (lambda s: (s.csv("eval.csv", HEADER), ["validate", s.config()])[1], "no rows"),
    "train_not_utf8": (lambda s: ["validate", s.data(HEADER.encode() + b"caf\xe9 good,positive\n")], "UTF-8"),
    "empty_text": (lambda s: ["validate", s.data(HEADER + ' ,positive\n' + GOOD)], "empty"),
    "missing_label_value": (lambda s: ["validate", s.data(HEADER + "good day,\n" + GOOD)], "label"),
    "extremely_long_text": (lambda s: ["validate", s.data(HEADER + "good " * 300_000 + ",positive\n" + GOOD)],
                            "characters long"),
    "one_class_only": (lambda s: (s.csv("eval.csv", HEADER + "good,positive\n"),
                                  ["validate", s.data(HEADER + "good day,positive\n" * 10)])[1], "two classes"),
    "jsonl_broken_line": (lambda s: _validate(s, _set("task", {"source": "jsonl", "train_file": str(
        s.csv("t.jsonl", '{"text": "good", "label": "positive"}\n{"text": oops}\n')), "eval_file": str(s.eval)})), "jsonl"),
    "parquet_not_parquet": (lambda s: _validate(s, _set("task", {"source": "parquet", "train_file": str(
        s.csv("t.parquet", "not parquet")), "eval_file": str(s.eval)})), "parquet"),
    # run time
    "unknown_backbone": (lambda s: ["run", s.config(_set("backbone", {"name": str(s.root / "no-such-model")})), "-q"],
                         "no-such-model"),
    "output_dir_is_a_file": (lambda s: ["run", s.config(_set("output_dir", str(s.train))), "-q"], "output_dir"),
    "resume_nothing": (lambda s: ["run", s.config(), "-q", "--resume"], "--resume"),
    "undecodable_image": (_undecodable_image, "a.png"),
    # predict and adapters
    "predict_not_a_run": (lambda s: ["predict", str(s.root), "good"], "not a method folder"),
    "predict_nothing": (lambda s: ["predict", str(s.copy_run())], "nothing to classify"),
    "adapter_from_other_base": (_other_base, "trained on base"),
    "truncated_safetensors": (_truncated_adapter, "adapter"),
    "results_from_newer_schema": (_newer_schema, "newer peftlab"),
    "report_of_newer_schema": (_report_newer_schema, "newer peftlab"),
    # image runs' saved files, and compose inputs
    "image_lora_truncated": (lambda s: ["predict", str(_truncated(s.copy_image_run("lora"), "adapter_model.safetensors")),
                                        s.image()], "cannot load adapter"),
    "image_full_truncated": (lambda s: ["predict", str(_truncated(s.copy_image_run("full"), "model.safetensors")),
                                        s.image()], "model.safetensors"),
    "image_results_newer_schema": (_image_newer_schema, "newer peftlab"),
    "image_predict_undecodable": (_undecodable_image_predict, "broken.png"),
    "compose_truncated_input": (lambda s: ["compose", "a", "-a", f"a={_truncated(s.copy_run(), 'adapter_model.safetensors')}",
                                           "--out", str(s.out)], "adapter_model.safetensors"),
    "compose_onto_other_base": (_compose_onto_other_base, "trained on base"),
}


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory) -> Path:
    """One finished tiny LoRA run, copied by the adapter cases before they break it."""
    root = tmp_path_factory.mktemp("trained")
    s = Setup(root, tiny_bert, root)
    proc = run_cli("run", s.config(), "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return s.out


@pytest.fixture(scope="module")
def image_trained(tmp_path_factory) -> Path:
    """A finished tiny ViT image run (LoRA and full), copied by the image cases before they break it."""
    from tiny_images import make_tiny_vit, write_image_folder

    root = tmp_path_factory.mktemp("image_trained")
    write_image_folder(root / "imgs", per_class=4)
    raw = {"name": "bad-images", "backbone": make_tiny_vit(root / "vit"),
           "task": {"source": "image_folder", "data_dir": str(root / "imgs"), "eval_fraction": 0.25},
           "methods": [{"method": "lora", "r": 2, "lr": 1e-2}, {"method": "full", "lr": 1e-3}],
           "train": {"epochs": 1, "batch_size": 4, "num_threads": 1}, "output_dir": str(root / "run")}
    (root / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("run", str(root / "c.yaml"), "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "run"


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line_and_exit_2(case, tiny_bert, trained, image_trained, tmp_path):
    build, words = CASES[case]
    s = Setup(tmp_path, tiny_bert, trained, image_trained)
    proc = run_cli(*build(s))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error"), (case, proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr
    assert words.lower() in lines[0].lower(), (case, lines[0])
    results = list(s.out.rglob("results.json")) if s.out.exists() else []
    assert not (s.out / "comparison.md").exists() and not results, (case, "left outputs behind")


def test_full_disk_gives_one_line_and_leaves_nothing(tiny_bert, trained, tmp_path, monkeypatch):
    """ENOSPC while writing: one line naming it, exit 2, and no file (not even a temp file) left."""
    import errno

    import peftlab.infra.io as pio

    real_fdopen = pio.os.fdopen

    class FullDisk:
        def __init__(self, fd, *a, **k):
            self.f = real_fdopen(fd, *a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pio.os, "fdopen", FullDisk)
    s = Setup(tmp_path, tiny_bert, trained)
    proc = run_cli("run", s.config(), "-q")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-1500:]
    assert "No space left on device" in lines[0]
    assert not [p for p in s.out.rglob("*") if p.is_file()], "a partial file was left behind"


def test_force_base_loads_an_adapter_from_another_base(tiny_bert, trained, tmp_path):
    s = Setup(tmp_path, tiny_bert, trained)
    args = _other_base(s)
    assert run_cli(*args).returncode == 2
    proc = run_cli(*args, "--force-base")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert proc.stdout.split("\t")[0] in {"positive", "negative", "neutral"}
