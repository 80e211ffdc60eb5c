"""Every file and folder peftlab writes follows the user's umask (0644 / 0755 under umask 022), not
mkstemp's / mkdtemp's private 0600 / 0700: a teammate, a group-shared folder or a web server can read
a run's results, report, adapters and merged models."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli, write_tiny_csvs
from method_table import _one_thread  # noqa: F401  (autouse: one intra-op thread)
from peftlab.infra.io import atomic_write_json, atomic_write_text, save_safetensors, temp_dir, temp_file


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def wrong_modes(root: Path, mask: int) -> list[str]:
    """``root`` and everything below it whose permission bits are not 0666 / 0777 less ``mask``."""
    want_file, want_dir = 0o666 & ~mask, 0o777 & ~mask
    bad = []
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = want_dir if p.is_dir() else want_file
        if not p.is_symlink() and mode != want:
            bad.append(f"{p.relative_to(root.parent)}: {mode:o}, want {want:o}")
    return bad


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writes_and_temp_folders_follow_the_umask(tmp_path: Path, mask: int):
    with umask(mask):
        atomic_write_text(tmp_path / "out" / "a.md", "x\n")
        atomic_write_json(tmp_path / "out" / "b.json", {"a": 1})
        atomic_write_text(tmp_path / "out" / "a.md", "replaced\n")  # over an existing file
        temp_dir(tmp_path / "out", ".t.")
        fd, _ = temp_file(tmp_path / "out", ".f.")
        os.close(fd)
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "out" / "w.safetensors")  # safetensors alone: 0600
    assert wrong_modes(tmp_path / "out", mask) == []
    assert (tmp_path / "out" / "a.md").read_text() == "replaced\n"
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith((".t.", ".f.")))
    assert names == ["a.md", "b.json", "w.safetensors"]  # no probe or temp file left behind


def test_writers_go_through_peftlab_io():
    """Private-mode writers (mkstemp, mkdtemp, safetensors' save_file) only in peftlab/infra/io.py, which
    gives their files the umask's mode: a new writer elsewhere cannot bring back 0600 outputs."""
    pkg = Path(__file__).resolve().parents[1] / "peftlab"
    pattern = re.compile(r"mkstemp|mkdtemp|NamedTemporaryFile|\bsave_file\b")
    found = [f"{p.relative_to(pkg)}:{i}" for p in pkg.rglob("*.py") if p.name != "io.py" or p.parent != pkg / "infra"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_run_report_predict_compose_merge_outputs_follow_the_umask(tiny_bert: str, tmp_path: Path, mask: int):
    """A real tiny run (LoRA adapters saved by peft, a bottleneck adapter saved by peftlab), then
    report, predict and compose with --merge: every file 0666 & ~umask, every folder 0777 & ~umask."""
    train, evalf = write_tiny_csvs(tmp_path, 24, 12)
    cfg = {"name": "modes", "backbone": tiny_bert, "baseline": False, "output_dir": str(tmp_path / "run"),
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "lora", "name": "la", "r": 2}, {"method": "lora", "name": "lb", "r": 2},
                       {"method": "pfeiffer", "reduction_factor": 8}],
           "train": {"epochs": 1, "batch_size": 12, "max_length": 16, "num_threads": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run, out = tmp_path / "run", tmp_path / "composed"
    with umask(mask):
        steps = [("run", str(tmp_path / "c.yaml"), "-q"),
                 ("report", str(run), "--out", str(tmp_path / "report")),
                 ("predict", str(run / "la"), "good drug"),
                 ("compose", "0.5*la + 0.5*lb", "-a", f"la={run / 'la'},lb={run / 'lb'}", "--merge", "--out", str(out))]
        for args in steps:
            proc = run_cli(*args)
            assert proc.returncode == 0, (args[0], proc.stderr[-2000:])
    for root in (run, tmp_path / "report", out):
        bad = wrong_modes(root, mask)
        assert bad == [], "\n".join(bad)
    # the files the issue names, and weights of each kind, were among those checked
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert {"run/comparison.md", "run/command.json", "run/la/results.json", "run/la/adapter/adapter_model.safetensors",
            "report/report.html", "composed/adapter/adapter_model.safetensors", "composed/model.safetensors"} <= written
    assert any(p.startswith("run/pfeiffer/adapter/") and p.endswith(".safetensors") for p in written)


def test_image_run_outputs_follow_the_umask(tmp_path: Path):
    """Image rows save otherwise: a ViT's peft LoRA, full weights, the probe's feature cache."""
    from tiny_images import make_tiny_vit, write_image_folder

    write_image_folder(tmp_path / "imgs", per_class=4)
    cfg = {"name": "img-modes", "backbone": make_tiny_vit(tmp_path / "vit"), "output_dir": str(tmp_path / "run"),
           "task": {"source": "image_folder", "data_dir": str(tmp_path / "imgs"), "eval_fraction": 0.25},
           "methods": [{"method": "lora", "r": 2}, {"method": "full"}, {"method": "linear_probe"}],
           "train": {"epochs": 1, "batch_size": 4, "num_threads": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with umask(0o027):
        proc = run_cli("run", str(tmp_path / "c.yaml"), "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = wrong_modes(tmp_path / "run", 0o027)
    assert bad == [], "\n".join(bad)
    assert any((tmp_path / "run" / ".feature_cache").glob("*.safetensors"))
