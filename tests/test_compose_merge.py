"""Merges of task vectors (issue 23): ``--combine ties | dare_linear | dare_ties | magnitude_prune |
task_arithmetic`` on the exact updates, against textbook results, seeds, merge == unmerged, peft's
factor-wise ``add_weighted_adapter`` (which is not the sum of the updates), and one-line refusals.

Adapters come from test_compose's ``make`` (a tiny random BERT, non-zero random factors)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from peft.utils.merge_utils import ties as peft_ties
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from conftest import run_cli
from method_table import _one_thread  # noqa: F401  (autouse: one intra-op thread)
from test_compose import base_logits, logits, make, pool
from peftlab.compose.core import compose, write
from peftlab.compose.merge import COMBINES, DENSITY_COMBINES, RANDOM_COMBINES, MergeSpec, dare, merge_vectors, ties_merge, trim
from peftlab.compose.model import load_with_adapter, merge_to
from peftlab.infra.errors import PeftlabError
from peftlab.methods.lora import lora_delta, lora_modules

MERGES = [c for c in COMBINES if c != "linear"]


@pytest.fixture(scope="module")
def adapters(tiny_bert: str, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge_adapters")
    return {"a": make(tiny_bert, root / "a", seed=1), "b": make(tiny_bert, root / "b", seed=2),
            "c": make(tiny_bert, root / "c", seed=3),
            "ia": make(tiny_bert, root / "ia", kind="ia3", seed=6), "ib": make(tiny_bert, root / "ib", kind="ia3", seed=7)}


def spec(combine: str, density: float = 0.5, seed: int | None = None) -> MergeSpec:
    """``combine`` with the density and seed where it takes them (elsewhere they are refused)."""
    return MergeSpec(combine, density if combine in DENSITY_COMBINES else None, seed if combine in RANDOM_COMBINES else None)


def deltas(out, p, prefix: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return lora_delta(out, prefix), [lora_delta(ad, prefix) for ad in p.values()]


# ---- the maths on hand-made vectors ------------------------------------------------------------

def test_ties_textbook_trim_elect_disjoint_mean():
    t1 = torch.tensor([4.0, -1.0, 2.0, -3.0, 0.5], dtype=torch.float64)
    t2 = torch.tensor([-2.0, 3.0, 1.0, -5.0, 0.2], dtype=torch.float64)
    t3 = torch.tensor([1.0, -4.0, -6.0, 0.3, 2.0], dtype=torch.float64)
    # trim to the top 3 of 5 magnitudes
    assert trim(t1, 0.6).tolist() == [4.0, 0.0, 2.0, -3.0, 0.0]
    assert trim(t2, 0.6).tolist() == [-2.0, 3.0, 0.0, -5.0, 0.0]
    assert trim(t3, 0.6).tolist() == [0.0, -4.0, -6.0, 0.0, 2.0]
    # elected signs (of the sums 2, -1, -4, -8, 2): + - - - +; mean over the agreeing kept values only
    want = [4.0, -4.0, -6.0, (-3.0 - 5.0) / 2, 2.0]
    assert ties_merge([t1, t2, t3], [1.0, 1.0, 1.0], 0.6).tolist() == want
    assert ties_merge([t1, t2, t3], [0.5, 0.5, 0.5], 0.6).tolist() == [w / 2 for w in want]  # c = the papers' lambda
    # peft's TIES agrees where no sum is exactly zero
    assert peft_ties([t1, t2, t3], torch.ones(3, dtype=torch.float64), 0.6).tolist() == want
    # an exact tie elects no sign: nothing survives; a negative weight flips that vector's vote
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert ties_merge([x, -x], [1.0, 1.0], 1.0).tolist() == [0.0, 0.0]
    assert ties_merge([x, x], [1.0, -0.5], 1.0).tolist() == [1.0, 2.0]


def test_dare_drops_and_rescales_seeded():
    t = torch.ones(20_000, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    d = dare(t, 0.3, g)
    kept = d != 0
    assert torch.allclose(d[kept], torch.full_like(d[kept], 1 / 0.3))  # survivors rescaled by 1/(1-p)
    assert abs(kept.double().mean().item() - 0.3) < 0.02 and abs(d.mean().item() - 1.0) < 0.07  # expectation kept
    assert torch.equal(dare(t, 1.0, g), t)  # p = 0: nothing dropped
    vecs = [torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    same = merge_vectors("dare_ties", vecs, [1.0, 1.0, 1.0], 0.4, gen(5))
    assert torch.equal(same, merge_vectors("dare_ties", vecs, [1.0, 1.0, 1.0], 0.4, gen(5)))
    assert not torch.equal(same, merge_vectors("dare_ties", vecs, [1.0, 1.0, 1.0], 0.4, gen(6)))


# ---- on adapters -------------------------------------------------------------------------------

def test_dare_density_one_is_linear_and_seeds(adapters):
    p = pool(adapters, "a", "b")
    linear, _ = compose("0.7*a + 0.4*b", p, mode="weight")
    dense, rec = compose("0.7*a + 0.4*b", p, mode="weight", merge=spec("dare_linear", 1.0))
    assert rec["combine"] == "dare_linear" and rec["seed"] == 0
    for prefix in lora_modules(linear):
        assert torch.allclose(lora_delta(dense, prefix), lora_delta(linear, prefix), atol=1e-6)
    s0, _ = compose("a + b", p, mode="weight", merge=spec("dare_linear", 0.5, 0))
    again, _ = compose("a + b", p, mode="weight", merge=spec("dare_linear", 0.5, 0))
    s1, _ = compose("a + b", p, mode="weight", merge=spec("dare_linear", 0.5, 1))
    prefix = next(iter(lora_modules(s0)))
    assert torch.equal(lora_delta(s0, prefix), lora_delta(again, prefix))
    assert not torch.allclose(lora_delta(s0, prefix), lora_delta(s1, prefix), atol=1e-3)
    pi = pool(adapters, "ia", "ib")
    lin_ia, _ = compose("ia + ib", pi)
    dense_ia, _ = compose("ia + ib", pi, merge=spec("dare_ties", 1.0))
    ties_ia, _ = compose("ia + ib", pi, merge=spec("ties", 1.0))
    for k in (k for k in lin_ia.tensors if k.endswith("ia3_l")):
        assert torch.equal(dense_ia.tensors[k], ties_ia.tensors[k])  # density 1: DARE-TIES is TIES
        la, lb = pi["ia"].tensors[k] - 1, pi["ib"].tensors[k] - 1  # TIES acts on l - 1 and adds 1 back
        want = 1 + torch.where(torch.sign(la) == torch.sign(lb), (la + lb) / 2, torch.where(la.abs() > lb.abs(), la, lb))
        assert torch.allclose(ties_ia.tensors[k], want, atol=1e-6)


@pytest.mark.parametrize("combine", MERGES)
def test_weight_mode_merges_the_exact_updates(adapters, combine):
    p = pool(adapters, "a", "b", "c")
    out, _ = compose("0.6*a + 0.5*b - 0.4*c", p, mode="weight", merge=spec(combine, 0.3, 3))
    for prefix in lora_modules(out):
        got, ds = deltas(out, p, prefix)
        want = spec(combine, 0.3, 3).task_merge()(prefix, ds, [0.6, 0.5, -0.4])
        assert torch.allclose(got, want, atol=1e-6)  # stored exactly (full-rank SVD, or concatenation)
    small, _ = compose("a + b", pool(adapters, "a", "b"), mode="weight", rank=3, merge=spec(combine, 0.3))
    assert small.config["r"] == 3 and lora_modules(small)[prefix][0].shape[0] == 3


@pytest.mark.parametrize("combine", MERGES)
@pytest.mark.parametrize("names,mode", [(("a", "b"), "weight"), (("ia", "ib"), "parameter")])
def test_merged_equals_unmerged_for_every_combine(adapters, tiny_bert, tmp_path, combine, names, mode):
    out, rec = compose(f"{names[0]} + 0.8*{names[1]}", pool(adapters, *names), mode=mode, head="first",
                       merge=spec(combine, 0.5))
    write(out, rec, tmp_path / "ad")
    unmerged, _ = load_with_adapter(tmp_path / "ad", out)
    merge_to(tmp_path / "ad", out, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    got, want = logits(merged), logits(unmerged)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, base_logits(tiny_bert), atol=1e-3)
    assert json.loads((tmp_path / "merged" / "peftlab_compose.json").read_text())["combine"] == combine


def headless(src: Path, dst: Path) -> Path:
    """A copy of adapter ``src`` without its classifier head (config and tensors)."""
    shutil.copytree(src, dst)
    conf = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**conf, "modules_to_save": None, "task_type": None}))
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "classifier" not in k}, str(dst / "adapter_model.safetensors"))
    return dst


def test_weight_linear_is_the_sum_of_updates_and_peft_linear_is_not(adapters, tiny_bert, tmp_path):
    """peft's ``add_weighted_adapter(combination_type="linear")`` adds A's and B's separately, so
    its update is (B_a + B_b)(A_a + A_b) s: the exact sum plus the cross terms B_a A_b + B_b A_a."""
    p = pool(adapters, "a", "b")
    ours, _ = compose("a + b", p, mode="weight", merge=spec("task_arithmetic"))
    heads_off = {n: headless(adapters[n], tmp_path / n) for n in ("a", "b")}  # peft merges no modules_to_save
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_bert),
                                      str(heads_off["a"]), adapter_name="a")
    model.load_adapter(str(heads_off["b"]), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "m", combination_type="linear")
    worst = 0.0
    for prefix in lora_modules(ours):
        exact = lora_delta(p["a"], prefix) + lora_delta(p["b"], prefix)
        assert torch.allclose(lora_delta(ours, prefix), exact, atol=1e-6)
        layer = model.get_submodule(prefix.removeprefix("base_model.model.").removesuffix(".lora_A.weight"))
        got = layer.get_delta_weight("m").double()
        (aa, ba), (ab, bb) = lora_modules(p["a"])[prefix], lora_modules(p["b"])[prefix]
        cross = 2.0 * (ba.double() @ ab.double() + bb.double() @ aa.double())
        assert torch.allclose(got, exact + cross, atol=1e-5)  # s = alpha / r = 2 for both
        worst = max(worst, (torch.linalg.matrix_norm(got - exact) / torch.linalg.matrix_norm(exact)).item())
    print(f"peft linear: relative Frobenius error of the update up to {worst:.2f}")
    assert worst > 0.3


# ---- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,mode,merge,msg", [
    ("a + b", "weight", MergeSpec("ties", 0.0), "--density 0: the fraction kept must be in (0, 1]"),
    ("a + b", "weight", MergeSpec("dare_ties", 1.5), "--density 1.5"),
    ("a + b", "weight", MergeSpec("ties"), "--combine ties needs --density"),
    ("a + b", "weight", MergeSpec("linear", 0.5), "--density applies to"),
    ("a + b", "weight", MergeSpec("ties", 0.5, 1), "--seed applies to"),
    ("a + b", "weight", MergeSpec("mean"), "--combine 'mean'"),
    ("2*(a - b)", "weight", MergeSpec("ties", 0.5), "needs a weighted sum of adapters"),
    ("a + b - a", "weight", MergeSpec("ties", 0.5), "'a' appears twice"),
    ("a + b", "parameter", MergeSpec("ties", 0.5), "use --mode weight"),
    ("a + b", "parameter", MergeSpec("task_arithmetic"), "use --mode weight"),
])
def test_bad_merges_are_one_line(adapters, text, mode, merge, msg):
    with pytest.raises(PeftlabError) as err:
        compose(text, pool(adapters, "a", "b"), mode=mode, merge=merge)
    assert msg in str(err.value) and "\n" not in str(err.value)


# ---- the command -------------------------------------------------------------------------------

def test_cli_merge_and_refusals(adapters, tmp_path):
    a = f"a={adapters['a']},b={adapters['b']}"
    proc = run_cli("compose", "a + 0.5*b", "-a", a, "--mode", "weight", "--combine", "dare_ties", "--density", "0.4",
                   "--seed", "7", "--out", str(tmp_path / "ok"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "ok" / "peftlab_compose.json").read_text())
    assert (record["combine"], record["density"], record["seed"], record["coefficients"]) == ("dare_ties", 0.4, 7, {"a": 1.0, "b": 0.5})
    for args, msg in ((["--combine", "ties", "--density", "1.5", "--mode", "weight"], "--density 1.5"),
                      (["--combine", "ties", "--density", "0.5"], "use --mode weight"),
                      (["--combine", "magnitude_prune", "--mode", "weight"], "needs --density"),
                      (["--combine", "ties", "--sweep", "density=0:1:0.5", "--eval", "x.yaml"], "--density 0:"),
                      (["--combine", "ties", "--density", "0.5", "--sweep", "density=0.5,1", "--eval", "x.yaml"], "both set"),
                      (["--combine", "linear", "--sweep", "density=0.5,1", "--eval", "x.yaml"], "has no density")):
        proc = run_cli("compose", "a + b", "-a", a, "--out", str(tmp_path / "x"), *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and msg in proc.stderr, (args, proc.stderr)
    proc = run_cli("compose", "2*(a + b)", "-a", a, "--out", str(tmp_path / "x"), "--combine", "ties", "--density", "0.5")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "weighted sum" in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


def test_cli_sweeps_density(adapters, tiny_bert, tmp_path):
    from conftest import write_tiny_csvs

    write_tiny_csvs(tmp_path, 12, 12, eval_name="val.csv")
    config = {"name": "val", "backbone": tiny_bert, "baseline": False,
              "task": {"source": "csv", "train_file": str(tmp_path / "train.csv"), "eval_file": str(tmp_path / "val.csv"),
                       "label_names": ["negative", "neutral", "positive"]},
              "methods": [{"method": "lora"}], "train": {"max_length": 24, "num_threads": 1},
              "output_dir": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    proc = run_cli("compose", "a + b", "-a", f"a={adapters['a']},b={adapters['b']}", "--mode", "weight",
                   "--combine", "ties", "--sweep", "density=0.5:1:0.5", "--eval", str(tmp_path / "c.yaml"),
                   "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["density"]) for r in rows] == [0.5, 1.0]
    best = max(rows, key=lambda r: (float(r["accuracy"]), float(r["macro_f1"])))
    record = json.loads((out / "peftlab_compose.json").read_text())
    assert record["combine"] == "ties" and record["density"] == float(best["density"]) and record["variables"] == {}
    assert "best density" in (out / "sweep.md").read_text()
