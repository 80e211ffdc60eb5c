"""bench/gpu.py's, bench/gpu_wheels.py's and bench/gpu_nan_probe.py's pure parts: targets, verdicts,
rendering, the slimmed wheel, the probe's masks and orders (no benchmark runs; the scripts themselves
are checked end to end by ``python bench/gpu.py --tiny`` and ``python bench/gpu_nan_probe.py --tiny``)."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gpu():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu
        import gpu_wheels
    finally:
        sys.path.remove(str(BENCH))
    gpu.wheels = gpu_wheels
    return gpu


@pytest.fixture(scope="module")
def probe(gpu):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_nan_probe
    finally:
        sys.path.remove(str(BENCH))
    return gpu_nan_probe


def entry(model, method, peftlab_s, trainer_s, peak=None, plan=None, flops=None):
    run = {"examples": 100, "peak_bytes": peak, "plan_bytes": plan}
    return {"model": model, "method": method, "round_examples": 100, "tokens": 5000, "flops": flops, "errors": {},
            "rounds": {"peftlab": [{**run, "train_s": s} for s in peftlab_s],
                       "trainer": [{"examples": 100, "train_s": s, "peak_bytes": None} for s in trainer_s]}}


def result():
    train = {
        "minilm/lora": entry("minilm", "lora", [1.0, 1.0, 3.0], [2.0, 1.5, 1.0], peak=100, plan=110),
        "smollm2/lora": entry("smollm2", "lora", [1.0], [1.2], peak=1000, plan=1300),
        "smollm2/qlora": entry("smollm2", "qlora", [2.0], [2.0], peak=400, plan=450),
        # 1e12 FLOPs per 100 examples at 100 ex/s = 1e12 FLOP/s: 40% of a 2.5e12 peak
        "smollm2/full": entry("smollm2", "full", [1.0], [1.4], peak=3000, plan=3000, flops=1e12),
    }
    return {"train": train, "peak": {"dtype": "bfloat16", "rates": {"square": 2.5e12}, "peak": 2.5e12},
            "env": {"gpu": "Some GPU", "tiny": False}, "errors": {"latency": "RuntimeError: boom"},
            "notes": ["train: stopped after 1 round(s)"], "command": "python bench/gpu.py"}


def test_rates_are_medians_over_rounds(gpu):
    e = result()["train"]["minilm/lora"]
    assert gpu.rate(e, "peftlab") == 100.0  # 100, 100, 33
    assert gpu.rate(e, "trainer") == pytest.approx(100 / 1.5)
    assert gpu.rate(e, "peftlab", "tokens") == 5000.0
    assert gpu.rate({}, "peftlab") != gpu.rate({}, "peftlab")  # nan without rounds
    assert gpu.measured_peak(e) == 100 and gpu.measured_peak(e, "trainer") is None


def test_targets_name_each_bar_and_verdict(gpu):
    rows = {t["target"]: t for t in gpu.targets(result())}
    lora_minilm = rows["lora on MiniLM-L6: peftlab / Trainer examples/s"]
    assert lora_minilm["value"] == pytest.approx(1.5) and lora_minilm["verdict"] == "met"
    assert rows["lora on SmolLM2-135M: peftlab / Trainer examples/s"]["verdict"] == "missed"  # 1.2x
    assert rows["full on SmolLM2-135M: peftlab / Trainer examples/s"]["verdict"] == "met"  # 1.4x
    assert rows["full on MiniLM-L6: peftlab / Trainer examples/s"]["verdict"] == "not measured"
    share = rows["full fine-tuning of SmolLM2-135M: useful FLOP/s / measured bf16 matmul peak"]
    assert share["value"] == pytest.approx(0.4) and share["verdict"] == "met"
    mem = rows["QLoRA peak memory / LoRA's on SmolLM2-135M"]
    assert mem["value"] == pytest.approx(0.4) and mem["verdict"] == "met"
    assert rows["plan estimate vs measured peak, SmolLM2-135M lora"]["value"] == pytest.approx(0.3)
    assert rows["plan estimate vs measured peak, SmolLM2-135M lora"]["verdict"] == "missed"
    assert rows["plan estimate vs measured peak, MiniLM-L6 lora"]["verdict"] == "met"


def test_verdict_edges(gpu):
    assert gpu.verdict(None, 1.3) == "not measured" and gpu.verdict(float("nan"), 1.3) == "not measured"
    assert gpu.verdict(0.5, 0.5, higher=False) == "met" and gpu.verdict(0.51, 0.5, higher=False) == "missed"


def test_render_lists_targets_failures_and_what_was_not_measured(gpu):
    body = gpu.render(result(), estimate=lambda model, method: 1100 if model == "smollm2" else None)
    assert body.startswith("## GPU\n")
    assert "| lora on MiniLM-L6: peftlab / Trainer examples/s | 1.50x | >= 1.3x | **met** |" in body
    assert "| full on MiniLM-L6: peftlab / Trainer examples/s | - | >= 1.3x | **not measured** |" in body
    assert "lm-eval is not installed on the device machine" in body
    assert "- latency: RuntimeError: boom" in body and "stopped after 1 round" in body
    assert "Some GPU" in body
    # today's plan against each side's measured peak (the Trainer side measured none here)
    assert "- SmolLM2-135M lora: plan 0 MB; measured peftlab 0 MB (+10%)" in body  # bytes here: 1100 vs 1000
    assert "- MiniLM-L6 lora: plan - MB; measured no peak" in body


def test_render_only_never_writes_a_tiny_run(gpu, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(gpu.benchkit, "write_section", lambda heading, body: written.append(heading))
    res = result()
    (tmp_path / "tiny.json").write_text(json.dumps({**res, "env": {"tiny": True}}))
    assert gpu.render_only(tmp_path / "tiny.json") is False and written == []
    (tmp_path / "gpu.json").write_text(json.dumps(res))
    assert gpu.render_only(tmp_path / "gpu.json") is True and written == ["## GPU"]


def test_slimmed_bitsandbytes_wheel_keeps_cuda13_and_a_matching_record(gpu, tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    files = {"bitsandbytes/__init__.py": b"x = 1\n", "bitsandbytes/libbitsandbytes_cpu.so": b"cpu",
             "bitsandbytes/libbitsandbytes_cuda118.so": b"old", "bitsandbytes/libbitsandbytes_cuda130.so": b"13",
             "bitsandbytes/libbitsandbytes_rocm64.so": b"amd", "bitsandbytes-0.50.2.dist-info/RECORD": b"stale"}
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    gpu.wheels.slim(wheel)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()
    assert names == {"bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
                     "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes-0.50.2.dist-info/RECORD"}
    assert {r.split(",")[0] for r in record} == names
    assert all(r.endswith(",,") or ",sha256=" in r for r in record)


def test_merged_runs_take_each_part_from_the_last_run_that_measured_it(gpu):
    first = {**result(), "latency": {"m b1 fp32": {"tokens": 4, "base": 1.0, "merged": 1.0, "unmerged": 2.0}},
             "env": {"gpu": "Some GPU", "tiny": False, "git": "aaa"}, "command": "python bench/gpu.py"}
    second = {"train": {"minilm/full": entry("minilm", "full", [1.0], [2.0])}, "errors": {}, "notes": ["short"],
              "env": {"gpu": "Some GPU", "tiny": False, "git": "bbb"}, "args": {"round_examples": 100},
              "command": "python bench/gpu.py --only train"}
    merged = gpu.merge_runs([first, second])
    assert set(merged["train"]) == {"minilm/full"} and merged["latency"] == first["latency"]
    assert merged["peak"] == first["peak"] and merged["env"]["git"] == "aaa, bbb"
    assert merged["errors"] == {"run 1 latency": "RuntimeError: boom"}
    assert merged["notes"] == ["run 1: train: stopped after 1 round(s)", "run 2: short"]
    assert "run 2: python bench/gpu.py --only train" in merged["command"]
    assert gpu.merge_runs([first]) is first


def test_masked_queries_counts_the_positions_that_attend_to_no_key(probe):
    left = [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]]  # left padding to a multiple: every row
    assert probe.masked_queries(left) == {"positions": 3 + 1 + 5, "rows": 3, "batch_rows": 3}
    right = [[1, 1, 0, 0], [1, 1, 1, 1]]  # trailing pads still see the real tokens before them
    assert probe.masked_queries(right) == {"positions": 0, "rows": 0, "batch_rows": 2}
    assert probe.masked_queries(right, causal=False) == {"positions": 0, "rows": 0, "batch_rows": 2}
    assert probe.masked_queries(left, causal=False) == {"positions": 5, "rows": 1, "batch_rows": 3}


def test_trainer_batches_cover_every_item_once_longest_first(probe):
    lengths = [5, 30, 7, 12, 9, 3, 25, 8, 40, 11]
    batches = probe.trainer_batches(lengths, 3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert [len(b) for b in batches] == [3, 3, 3, 1] and batches[0][0] == 8  # the longest item first
    assert batches == probe.trainer_batches(lengths, 3, seed=0)  # seeded


def test_first_step_and_summary_name_where_a_variant_went_non_finite(probe):
    steps = [{"step": 1, "loss": 1.1, "grads_finite": True}, {"step": 2, "loss": 1.0, "grads_finite": False},
             {"step": 3, "loss": float("nan")}]
    assert probe.first_step(steps, "loss") == 3 and probe.first_step(steps, "grads_finite") == 2
    assert probe.first_step(steps, "weights_finite") is None
    assert probe.summary({"first_nonfinite": {"loss": 3, "grad": 2, "weight": None}}) == "non-finite loss@3 grad@2"
    assert probe.summary({"first_nonfinite": {"loss": None}, "steps_run": 16}) == "finite (16 steps)"
    assert probe.summary({"error": "RuntimeError: boom | tb"}) == "ERROR RuntimeError: boom"
    assert probe.summary({"skipped": "past --deadline-s 100"}) == "skipped: past --deadline-s 100"


def test_nan_losses_from_before_the_masks_fix_are_explained_only_for_such_runs(gpu, monkeypatch):
    res = result()
    res["train"]["smollm2/full"] = {**res["train"].get("smollm2/full", {"model": "smollm2", "method": "full"}),
                                    "errors": {"round 1 peftlab": "RuntimeError: failed: NonFiniteLoss: NaN | tb"}}
    monkeypatch.setattr(gpu, "before_masks", lambda commits: True)
    assert gpu.NAN_NOTE in gpu.render(res, estimate=lambda model, method: None)
    monkeypatch.setattr(gpu, "before_masks", lambda commits: False)  # a run with the fix: its NaN stands alone
    assert gpu.NAN_NOTE not in gpu.render(res, estimate=lambda model, method: None)


def test_before_masks_cannot_tell_without_the_commit(gpu):
    assert gpu.before_masks("") is False
    assert gpu.before_masks("0000000") is False  # not in this clone: not claimed to predate anything
