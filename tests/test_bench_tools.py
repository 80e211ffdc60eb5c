"""bench/run_all's section handling, on a fake benchmark in a fake checkout (no real benchmark runs)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftlab.report.sections import changed_sections, replace_header, replace_section, split_sections

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "bench" / "run_all"

FAKE = '''
import sys  # takes --quick
from pathlib import Path
from peftlab.report.sections import write_section

if __name__ == "__main__":
    if Path("FAIL").exists():
        sys.exit(3)
    body = "## Fake bench\\n\\nargs: " + " ".join(sys.argv[1:]) + "\\n"
    write_section(Path("BENCHMARKS.md"), "## Fake bench", body)
'''

BEFORE = """# Benchmarks

old header, hand-written

## Fake bench

args: old numbers

## Someone else's section

| x | 1 |
"""


@pytest.fixture()
def fake_root(tmp_path: Path) -> Path:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fake_bench.py").write_text(FAKE)
    (tmp_path / "bench" / "benchkit.py").write_text("# a helper module, not a benchmark\n")
    (tmp_path / "BENCHMARKS.md").write_text(BEFORE)
    return tmp_path


def run_all(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
    return subprocess.run([sys.executable, str(RUN_ALL), "--root", str(root), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_full_run_rewrites_only_its_section_and_the_header(fake_root: Path):
    proc = run_all(fake_root, "--only", "fake_bench")
    assert proc.returncode == 0, proc.stderr
    text = (fake_root / "BENCHMARKS.md").read_text()
    head, sections = split_sections(text)
    assert "hand-written" not in head and "bench/run_all --root" in head and "ran: fake_bench" in head
    assert sections["## Fake bench"].strip() == "## Fake bench\n\nargs:"
    assert sections["## Someone else's section"].strip() == "## Someone else's section\n\n| x | 1 |"
    assert list(sections) == ["## Fake bench", "## Someone else's section"]  # order kept


def test_quick_run_leaves_the_real_numbers_alone(fake_root: Path):
    proc = run_all(fake_root, "--quick")
    assert proc.returncode == 0, proc.stderr
    assert (fake_root / "BENCHMARKS.md").read_text() == BEFORE
    quick = (fake_root / "BENCHMARKS.quick.md").read_text()
    assert "args: --quick" in quick and "Someone else" not in quick
    # every listed script that this checkout lacks is skipped by name, not an error
    assert "skip train_throughput: bench/train_throughput.py is not in this checkout" in proc.stdout
    assert "skip drugreview_all" in proc.stdout and "benchkit" not in proc.stdout.replace("benchkit.py", "")


def test_quick_skips_a_script_without_quick(fake_root: Path):
    (fake_root / "bench" / "slow_bench.py").write_text(FAKE.replace("Fake bench", "Slow bench").replace("  # takes --quick", ""))
    proc = run_all(fake_root, "--quick")
    assert proc.returncode == 0, proc.stderr
    assert "skip slow_bench: bench/slow_bench.py has no --quick option" in proc.stdout
    assert "Slow bench" not in (fake_root / "BENCHMARKS.quick.md").read_text()


def test_unknown_name_and_failing_script(fake_root: Path):
    assert run_all(fake_root, "--only", "no_such_bench").returncode == 2
    (fake_root / "FAIL").write_text("")
    proc = run_all(fake_root, "--only", "fake_bench")
    assert proc.returncode == 1 and "failed (exit 3)" in proc.stdout
    assert "args: old numbers" in (fake_root / "BENCHMARKS.md").read_text()


def test_section_functions():
    text = "# T\n\nintro\n\n## A\n\na1\n\n## B\n\nb1\n"
    assert replace_section(text, "## A", "## A\n\na2\n\n") == "# T\n\nintro\n\n## A\n\na2\n\n## B\n\nb1\n"
    assert replace_section(text, "## C", "## C\n\nc\n").endswith("## B\n\nb1\n\n## C\n\nc\n")
    after = replace_section(text, "## B", "## B\n\nb2\n")
    assert changed_sections(text, after) == {"## B": "## B\n\nb2\n"}
    assert replace_header(after, "# New").startswith("# New\n\n## A\n")


def test_throughput_projection_carries_round_rates_to_each_sizes_padding():
    """bench/train_report.projected: ratio x (peftlab's padding at the round / at n) x (peer's at n / at the round)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from train_report import projected
    finally:
        sys.path.pop(0)
    pad = [{"n": 640, "peftlab": 1.10, "tuned": 1.32, "notebook": 3.2},
           {"n": 6400, "peftlab": 1.00, "tuned": 1.00, "notebook": 3.2}]
    r = {"round_examples": 640, "median_ex_s": {"peftlab": 24.0, "tuned": 20.0, "notebook": 8.0}, "padding": pad}
    (n, ratios), = projected(r)
    assert n == 6400
    assert ratios["tuned"] == pytest.approx(1.2 * 1.10 / 1.00 * 1.00 / 1.32)
    assert ratios["notebook"] == pytest.approx(3.0 * 1.10)
    assert projected({**r, "round_examples": 160}) == []  # no padding row at the round size: nothing to project from


def test_a_missed_bar_over_the_tuned_trainer_is_explained_per_computed_token():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from train_report import per_token_text
    finally:
        sys.path.pop(0)
    pad = [{"n": 640, "peftlab": 1.10, "tuned": 1.32, "notebook": 3.2}]
    r = {"round_examples": 640, "median_ex_s": {"peftlab": 24.0, "tuned": 20.0, "notebook": 8.0}, "padding": pad}
    text = per_token_text(r)  # 1.2x: missed
    assert "peftlab runs 1.00x (b)" in text and "would take 1.30x more per computed token" in text
    assert per_token_text({**r, "median_ex_s": {"peftlab": 27.0, "tuned": 20.0}}) == ""  # 1.35x: met
    assert per_token_text({**r, "round_examples": 160}) == ""  # no padding row at the round size


def test_accuracy_rerun_of_one_side_keeps_the_others_with_their_commit():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from train_accuracy import merge_saved, render
    finally:
        sys.path.pop(0)
    side = lambda acc: {"accuracy": acc}  # noqa: E731
    row = lambda m, sides: {"method": m, "n_train": 64, "n_eval": 400, "eval_majority": 0.35, "sides": sides}  # noqa: E731
    before = {"git": "old1", "command": "python bench/train_accuracy.py --methods full,lora",
              "results": [row("full", {s: side(0.5) for s in ("peftlab", "notebook", "tuned")}),
                          row("lora", {s: side(0.4) for s in ("peftlab", "notebook", "tuned")})]}
    now = row("lora", {"peftlab": {**side(0.45), "git": "new2", "command": "--sides peftlab"}})
    now.update(git="new2", command="--sides peftlab")
    merged = merge_saved([now], before)
    assert [r["method"] for r in merged] == ["full", "lora"]
    lora = merged[1]["sides"]
    assert lora["peftlab"]["accuracy"] == 0.45 and lora["tuned"] == {"git": "old1", "command": before["command"], "accuracy": 0.4}
    text = render(merged, "--sides peftlab", "hw", "new2")
    assert "full old1" in text and "lora peftlab new2" in text and "lora notebook/tuned old1" in text


def test_accuracy_verdict_separates_the_bar_from_the_noise():
    """bench/train_report.verdict: the 0.5-point bar and two standard errors are separate statements."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        from train_report import standard_error, verdict
    finally:
        sys.path.pop(0)
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    assert verdict(0.004, 0.01) == "within 0.5 points; within 2 standard errors of the difference"
    assert verdict(-0.015, 0.01) == "NOT within 0.5 points; within 2 standard errors of the difference"
    assert verdict(0.03, 0.01) == "NOT within 0.5 points; beyond 2 standard errors of the difference"


def _bench(name: str):
    """A bench/ script imported as a module (its helpers, not its main)."""
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _suite():
    return _bench("method_suite")


def _row(name, seed, acc, method=None, status="ok", **kw):
    from peftlab.results import ParamCounts, RunResult, Timing

    return RunResult(name=name, method=method or name, task="sst2", backbone="minilm-l6", seed=seed, status=status,
                     accuracy=acc if status == "ok" else None, macro_f1=acc if status == "ok" else None,
                     params=ParamCounts(trainable=10, total=1000, percent_trainable=1.0),
                     timing=Timing(wall_s=12.0, train_s=10.0), peak_memory_bytes=2**30,
                     method_params={"method": method or name, "lr": 1e-3}, **kw)


def test_method_suite_config_is_a_valid_peftlab_config_per_benchmark():
    """bench/method_suite: one config per benchmark, every text method of all_methods.yaml, seeds and search."""
    ms = _suite()
    from peftlab.config import load_raw, validate_raw

    source = load_raw(REPO / "configs" / "all_methods.yaml")
    methods = ms.text_methods(source["methods"])
    assert len(methods) >= 10
    lrs = {ms.row_label(m): 0.0316 for m in methods}
    raw = ms.suite_config(ms.BENCHES["mnli"], source, methods, [0, 1, 2], Path("runs/x"), 8000, 2000, lrs=lrs)
    cfg = validate_raw(raw)
    assert cfg.seed_list == [0, 1, 2] and cfg.search is None and {m.lr for m in cfg.methods} == {0.0316}
    assert cfg.task.text_pair_column == "hypothesis" and cfg.task.n_train is None  # the subsample is in the file
    assert cfg.output_dir == "runs/x/mnli/run" and cfg.train.seed == 0
    assert cfg.task.train_file.endswith("mnli/data/train-8000.jsonl")  # another size is another config
    quick = validate_raw(ms.suite_config(ms.BENCHES["sst2"], source, ms.pick_methods(methods, ["lora", "full"]), [0],
                                         Path("runs/q"), 64, 32, epochs=1))
    assert [m.label for m in quick.methods] == ["full", "lora"] and quick.search is None
    assert quick.train.epochs == 1 and all(m.epochs is None for m in quick.methods)
    with pytest.raises(SystemExit):
        ms.pick_methods(methods, ["nope"])
    line = ms.subsample_lines(["a"], ["b"], [2], ms.BENCHES["mnli"])
    assert line == '{"premise": "a", "hypothesis": "b", "label": "contradiction"}\n'


def test_method_suite_renders_partial_progress_and_the_ordering_from_results():
    """Counts done rows of the plan, lists what remains, reuses peftlab's n.s., states the measured ordering."""
    ms = _suite()
    results = [_row("full", 0, 0.90), _row("full", 1, 0.92), _row("lora", 0, 0.91), _row("lora", 1, 0.90),
               _row("prompt_tuning", 0, 0.70), _row("houlsby", 0, 0.80), _row("houlsby", 1, 0.0, status="failed",
                                                                                  error="boom")]
    view = ms.BenchView(ms.BENCHES["sst2"], ["full", "lora", "prompt_tuning", "houlsby", "ia3"], [0, 1], 100, 50,
                        results)
    assert len(view.done()) == 6
    assert view.remaining() == [(0, "ia3"), (1, "prompt_tuning"), (1, "houlsby"), (1, "ia3")]
    view.search_cost = {"full": 4.0}
    view.unsearched = ["ia3"]
    body = ms.render([view], "python bench/method_suite.py", "cpu", True, quick=False)
    assert body.startswith(ms.SECTION + "\n")
    assert "**Progress: 6 of 10 planned rows (method x seed) done.**" in body
    assert "- SST-2 seed 1: prompt_tuning, houlsby, ia3 (lr not searched yet)" in body and "houlsby failed (boom)" in body
    table = {line.split(" | ")[0][2:]: line for line in body.splitlines() if line.startswith("| ")}
    assert "0.9100 ± 0.0141" in table["full"] and table["full"].endswith("| best |")
    assert table["lora"].endswith("| n.s. |")  # 0.905 ± 0.007 overlaps the best's spread
    assert table["ia3"].startswith("| ia3 | 0 | not run yet")
    assert "| 1 (1 failed) |" in table["houlsby"]
    assert "| 1 | 10 | 4 | 1024 | 0.001 |" in table["full"]  # trainable %, train s, search s, peak MB, lr
    para = ms.ordering(view)
    assert "full 91.0 > lora 90.5 > houlsby 80.0 > prompt_tuning 70.0" in para
    assert "houlsby -11.0" in para and "within 3 points: none" in para
    assert "LoRA -0.5 points, within 1 point" in para and "holds" in para
    assert "majority class" not in para  # no baseline known: no near-chance claim
    view.baseline = _row("majority_class", 0, 0.66)
    assert "Within 5 points of the majority class (66.0), so not learning this task: prompt_tuning 70.0." in ms.ordering(view)
    assert "not measured yet" in ms.ordering(ms.BenchView(ms.BENCHES["mnli"], ["lora"], [0], 1, 1,
                                                          [_row("lora", 0, 0.5)]))


def test_method_suite_archive_carries_finished_rows_to_a_fresh_machine(tmp_path):
    """Each row is its own run; a finished row is archived with its config's fingerprint, so a machine
    without the run folders still counts it done, and a row trained with another config does not count."""
    ms = _suite()
    from peftlab.config import load_raw, validate_raw

    source = load_raw(REPO / "configs" / "all_methods.yaml")
    methods = ms.pick_methods(ms.text_methods(source["methods"]), ["full", "lora"])
    bench = ms.BENCHES["sst2"]
    cfg = validate_raw(ms.suite_config(bench, source, methods, [0, 1], tmp_path / "runs", 64, 32,
                                       lrs={"full": 1e-4, "lora": 1e-3}))
    rcfg = ms.row_config(cfg, 1, cfg.methods[1])
    assert [m.label for m in rcfg.methods] == ["lora"] and rcfg.train.seed == 1 and rcfg.seeds is None
    assert rcfg.output_dir == str(tmp_path / "runs" / "sst2" / "run" / "seed-1" / "lora")
    archive = tmp_path / "archive"
    result = _row("lora", 1, 0.8).model_copy(update={"method_params": cfg.methods[1].model_dump(mode="json")})
    ms.archive_row(bench, rcfg, result, archive)
    assert (archive / "sst2" / "seed-1" / "lora.json").is_file()
    view = ms.load_view(bench, cfg, 64, 32, archive=archive)  # no run folder exists: the archive alone
    assert view.done() == {(1, "lora")} and view.results[0].accuracy == 0.8
    assert view.remaining() == [(0, "full"), (0, "lora"), (1, "full")]
    other = validate_raw(ms.suite_config(bench, source, methods, [0, 1], tmp_path / "runs", 64, 32,
                                         lrs={"full": 1e-4, "lora": 3e-3}))  # another lr: another row
    assert ms.archived_row(bench, ms.row_config(other, 1, other.methods[1]), archive) is None
    assert ms.load_view(bench, other, 64, 32, archive=archive).done() == set()
    # an archive written before a config field existed (here: train.warmup_ratio and the row's r) still
    # counts while the field holds its declared default; a value other than the default does not
    path = archive / "sst2" / "seed-1" / "lora.json"
    payload = json.loads(path.read_text())
    payload["config_sha"] = "from an older peftlab"
    del payload["config"]["train"]["warmup_ratio"], payload["config"]["methods"][0]["r"]
    path.write_text(json.dumps(payload))
    assert rcfg.methods[0].r == type(rcfg.methods[0]).model_fields["r"].default  # the row keeps r's default
    assert ms.archived_row(bench, rcfg, archive) is not None
    changed = rcfg.model_copy(update={"train": rcfg.train.model_copy(update={"warmup_ratio": 0.5})})
    assert ms.archived_row(bench, changed, archive) is None
    payload["config"]["train"]["no_longer_a_field"] = 1
    path.write_text(json.dumps(payload))
    assert ms.archived_row(bench, rcfg, archive) is None  # a removed field: another training


def test_method_suite_trains_each_method_at_its_searched_value():
    """The suite's lr per method and benchmark is the best stored trial of bench/method_defaults.py; QLoRA
    takes LoRA's; a method without trials is reported as not searched (the suite leaves it unrun)."""
    ms = _suite()
    bench = ms.BENCHES["sst2"]
    store = {"lora": {"trials": {"-6": {"eval_loss": 0.60, "cost_s": 2.0}, "-5": {"eval_loss": 0.40, "cost_s": 3.0},
                                 "-4": {"eval_loss": None, "cost_s": 1.0}}},
             "full": {"trials": {"-8": {"eval_loss": 0.5, "cost_s": 1.0}, "-7": {"eval_loss": 0.5, "cost_s": 1.0}}}}
    rows = [{"method": "lora"}, {"method": "qlora"}, {"method": "full"}, {"method": "ia3"}]
    store["ia3"] = {"trials": {"-4": {"eval_loss": 0.92 * math.log(2)}, "-3": {"eval_loss": 0.995 * math.log(2)}}}
    lrs, at_default, missing = ms.searched_lrs(bench, rows, store)
    assert lrs == {"lora": 0.00316, "qlora": 0.00316, "full": 0.0001,  # full: a tie, the smaller
                   "ia3": ms.METHODS.get("ia3").Params.model_fields["lr"].default}  # best trial 0.92 of chance: default
    assert at_default == ["ia3"] and missing == []
    picks = {"ia3": {"trials": {"-2": {"eval_loss": 0.3}, "-3": {"eval_loss": 0.5}}}}  # the defaults' bench
    lrs, at_default, _ = ms.searched_lrs(bench, rows, store, picks)
    assert lrs["ia3"] == 0.1 and at_default == ["ia3"]  # falls back to its pick there (generic rows have no default)
    del store["ia3"]
    assert ms.search_costs(store) == {"lora": 6.0, "full": 2.0, "qlora": 6.0}
    lrs, _, missing = ms.searched_lrs(bench, [{"method": "lora"}, {"method": "ia3"}], store)
    assert lrs == {"lora": 0.00316} and missing == ["ia3"]  # ia3 is not run until it is searched


def _defaults():
    return _bench("method_defaults")


def test_method_defaults_grid_bracketing_and_pick():
    """Half-decade ladder around the default; an edge best asks for the next value; the pick averages benchmarks."""
    md = _defaults()
    assert [md.ladder(k) for k in md.window(5e-4)] == [3.16e-05, 0.0001, 0.000316, 0.001, 0.00316, 0.01]
    assert md.window(1e-2) == [-6, -5, -4, -3, -2, -1]
    assert md.extension({-4: 0.9, -3: 0.8, -2: 0.7}) == -1  # best at the top edge: try higher
    assert md.extension({-4: 0.6, -3: 0.8, -2: 0.7}) == -5  # best at the bottom edge: try lower
    assert md.extension({-4: 0.9, -3: 0.5, -2: float("inf")}) is None  # bracketed
    assert md.extension({-4: float("inf")}) is None
    assert md.normalised(math.log(3), 3) == 1.0 and md.normalised(None, 2) == float("inf")
    # sst2 prefers -3, mnli prefers -2; the mean decides, and an index one benchmark lacks does not count
    per = {"sst2": {-4: 0.9, -3: 0.5, -2: 0.6, -1: 0.1}, "mnli": {-4: 0.99, -3: 0.95, -2: 0.8}}
    assert md.pick(per) == -2
    assert md.pick({"sst2": {-3: float("inf")}}) is None



def test_shipped_default_learning_rates_are_the_documented_search_picks():
    """Each method's default lr is the pick of bench/method_defaults.py's committed trials (issue 19: defaults
    come from a documented search), so a changed default without new evidence fails here."""
    md = _defaults()
    from peftlab.config import load_raw
    from peftlab.methods import METHODS

    stores = {k: md.load(md.BENCHES[k]) for k in md.PICK_BENCHES}
    assert all(stores.values()), "bench/results/method_defaults/<benchmark>.json missing"
    for row in md.text_methods(md.load_source()["methods"]):  # all_methods.yaml and peft_zoo.yaml
        if row["method"] in md.GENERIC:  # one default serves every peft type: its pick sets none
            continue
        label = md.row_label(row)
        src = md.SAME_AS.get(label, label)
        per = {k: {int(i): md.normalised(t["eval_loss"], len(md.BENCHES[k].labels)) for i, t in s[src]["trials"].items()}
               for k, s in stores.items()}
        if src == label:  # trials made under another protocol (e.g. a frozen BERT pooler) are stale evidence
            assert all(s[label]["protocol"] == md.protocol(row, md.BUDGET_STEPS) for s in stores.values()), label
        chosen = md.default_pick(per)
        assert chosen is not None and all(md.extension(v) is None for v in per.values()), f"{label}: not bracketed"
        default = METHODS.get(row["method"]).Params.model_fields["lr"].default
        assert math.isclose(default, md.ladder(chosen), rel_tol=1e-6), f"{label}: default {default} != pick"


def test_merging_density_choice_held_out_validation_and_measures():
    """bench/merging.py: the density is chosen on validation (mean accuracy, then macro-F1, then the
    sparser merge); validation is what the LoRAs never saw; normalised accuracy and relative errors."""
    import torch

    mg = _bench("merging")
    val = {0.2: [(0.8, 0.7), (0.6, 0.5)], 0.5: [(0.9, 0.6), (0.6, 0.5)], 0.8: [(0.7, 0.9), (0.7, 0.9)]}
    assert mg.best_density(val) == 0.5  # mean accuracy 0.75 beats 0.70 (macro-F1 only breaks ties)
    assert mg.best_density({0.2: [(0.5, 0.4)], 0.8: [(0.5, 0.6)]}) == 0.8  # same accuracy: macro-F1
    assert mg.best_density({0.5: [(0.5, 0.4)], 0.2: [(0.5, 0.4)]}) == 0.2  # exact tie: the sparser merge
    assert mg.held_out(["a", "b", "c", "b", "d"], {"b", "d"}) == [0, 2]  # a repeat of a trained text is seen
    assert mg.normalised({"x": 0.4, "y": 0.9}, {"x": 0.8, "y": 0.9}) == pytest.approx(0.75)
    want = {"m": torch.tensor([[3.0, 0.0], [0.0, 4.0]]), "n": torch.zeros(2, 2)}
    got = {"m": torch.tensor([[3.0, 0.0], [0.0, 4.0]]) * 1.1, "n": torch.zeros(2, 2)}
    overall, worst = mg.relative_error(got, want)
    assert overall == pytest.approx(0.1) and worst == pytest.approx(0.1)  # a module with no update counts 0
    assert mg.norm_ratio(got, want) == pytest.approx(1.1)


def test_t5_imdb_bench_skips_without_a_checkpoint_and_keeps_the_configs_rows(tmp_path, capsys):
    """bench/t5_imdb.py: offline, without a T5 checkpoint (or without ../shared/data/imdb), it says
    so in one line and leaves BENCHMARKS.md alone; its config is configs/t5_imdb.yaml's rows and head
    on the shared IMDB copy (labels negative/positive: the verbalizers are the label names)."""
    t5 = _bench("t5_imdb")
    from peftlab.config import load_raw, validate_raw

    before = (REPO / "BENCHMARKS.md").read_text()
    assert t5.main(["--backbone", str(tmp_path / "no-such-t5")]) == 0
    assert capsys.readouterr().out.startswith("skip: ") and (REPO / "BENCHMARKS.md").read_text() == before
    source = load_raw(REPO / "configs" / "t5_imdb.yaml")
    raw = t5.bench_config(source, "my-t5", 100, 50, 2, str(tmp_path / "out"))
    assert raw["methods"] == source["methods"] and raw["backbone"] == {"name": "my-t5", "head": "text"}
    assert raw["task"]["label_names"] == ["negative", "positive"] and raw["task"]["n_eval"] == 50
    assert raw["train"]["num_threads"] == 2
    validate_raw(raw)
