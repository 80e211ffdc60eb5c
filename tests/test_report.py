"""The report: rendered from a real tiny run (tiny random BERT), plus rows of other kinds."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run_cli_process
from peftlab.report.collect import Row, RunDir
from peftlab.report.plots import Point, pareto_frontier, pareto_svg
from peftlab.report.table import COLUMNS, table
from peftlab.results import EpochRecord, ParamCounts, RunResult, Timing, read_result

EVIL = "<script>alert(1)</script>"
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"}
# SVG leaf elements this report self-closes (<line .../>)
SELF_CLOSED = {"line", "polyline", "circle", "rect", "path"}


class Page(HTMLParser):
    """Collects tags and attributes and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def figures(self, kind: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == "figure" and a.get("data-kind") == kind]


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], p.stack
    return p


@pytest.fixture(scope="module")
def tiny_run(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-method run whose third label is a script tag (the escaping test)."""
    from conftest import tiny_rows, write_csv

    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    root = tmp_path_factory.mktemp("report")
    rename = {"neutral": EVIL}
    for name, rows in (("train.csv", tiny_rows(48, 1)), ("eval.csv", tiny_rows(24, 2))):
        write_csv(root / name, [(t, rename.get(l, l)) for t, l in rows])
    cfg = validate_raw({
        "name": "tiny", "backbone": tiny_bert,
        "task": {"source": "csv", "train_file": str(root / "train.csv"), "eval_file": str(root / "eval.csv")},
        "methods": [{"method": "linear_probe", "lr": 5e-2, "epochs": 3}, {"method": "lora", "r": 2, "lr": 1e-2}],
        "train": {"epochs": 2, "batch_size": 16, "max_length": 32, "device": "cpu"},
        "output_dir": str(root / "run"),
    })
    results = run_experiment(cfg, quiet=True, command=["peftlab", "run", "c.yaml", f"task.label_names={EVIL}"])
    assert [r.status for r in results] == ["ok"] * 3
    return root / "run"


def add_other_rows(run: Path) -> None:
    """An in-context row (nothing trained, no epochs, no timing) and a failed row, as other runners write."""
    base = read_result(run / "lora" / "results.json")
    icl = base.model_copy(update=dict(
        name="icl-4shot", method="icl", epochs=[], timing=None, adapter_bytes=None, adapter_path=None,
        params=ParamCounts(trainable=0, total=21000, percent_trainable=0.0), flags=[], accuracy=0.5))
    icl.write(run / "icl-4shot")
    RunResult(name="broken", method="lora", task=base.task, backbone="x", seed=0, status="failed",
              error=f"ValueError: bad {EVIL}").write(run / "broken")
    RunResult(name="zs-no-params", method="zeroshot", task=base.task, backbone="clip", seed=0, accuracy=0.4,
              labels=base.labels).write(run / "zs-no-params")


def test_run_writes_report(tiny_run: Path):
    html = (tiny_run / "report.html").read_text(encoding="utf-8")
    md = (tiny_run / "report.md").read_text(encoding="utf-8")
    page = parse(html)
    rows = [a["data-method"] for t, a in page.tags if t == "tr" and "data-method" in a]
    assert rows == ["majority_class", "linear_probe", "lora"]
    assert [f["data-axis"] for f in page.figures("pareto")] == ["params", "memory", "time", "size"]
    assert page.figures("time") and page.figures("memory")
    for kind in ("curves", "confusion", "per-class-f1"):
        assert {f["data-method"] for f in page.figures(kind)} >= {"linear_probe", "lora"}, kind
    for name in ("linear_probe", "lora", "majority_class"):
        assert f"| {name} |" in md
    assert f"peftlab run {tiny_run / 'config.yaml'}" in html and "torch" in html
    assert "Originally started as <code>peftlab run c.yaml" in html  # the recorded command line


def test_no_external_url_and_no_script(tiny_run: Path):
    html = (tiny_run / "report.html").read_text(encoding="utf-8")
    page = parse(html)
    assert not [t for t, _ in page.tags if t in ("script", "link", "img", "iframe", "object")]
    for _, attrs in page.tags:
        for key in ("src", "href", "xlink:href", "action"):
            v = attrs.get(key) or ""
            assert not v or v.startswith("#"), (key, v)
    assert "http://" not in html and "https://" not in html and "url(" not in html


def outside_code_fences(md: str) -> str:
    """Markdown without its fenced blocks (a renderer shows those verbatim, as text)."""
    import re

    return re.sub(r"(?ms)^(`{3,})[^\n]*\n.*?^\1\s*$", "", md)


def test_labels_are_escaped(tiny_run: Path):
    html = (tiny_run / "report.html").read_text(encoding="utf-8")
    md = (tiny_run / "report.md").read_text(encoding="utf-8")
    for name, text in (("report.html", html), ("report.md", outside_code_fences(md))):
        assert EVIL not in text, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, name
    assert EVIL in md  # inside the fenced command, where Markdown shows it verbatim
    page = parse((tiny_run / "report.html").read_text(encoding="utf-8"))
    assert EVIL in "".join(page.text)  # shown to the reader as text


def test_report_cli_mixed_rows_and_tasks(tiny_run: Path, tmp_path: Path):
    """Other runners' rows and a second task, through the real CLI; nothing crashes, all rows show."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run, a, ignore=shutil.ignore_patterns("adapter"))
    add_other_rows(a)
    shutil.copytree(tiny_run, b, ignore=shutil.ignore_patterns("adapter"))
    for f in b.rglob("results.json"):
        r = read_result(f)
        r.model_copy(update={"task": "other-task"}).write(f.parent)
    proc = run_cli_process("report", str(a), str(b), "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    page = parse(html)
    rows = [a_["data-method"] for t, a_ in page.tags if t == "tr" and "data-method" in a_]
    assert set(rows) == {"a/majority_class", "a/linear_probe", "a/lora", "a/icl-4shot", "a/broken", "a/zs-no-params",
                         "b/majority_class", "b/linear_probe", "b/lora"}
    assert "Not plotted (no accuracy or trainable parameters recorded): a/zs-no-params." in html
    assert [a_.get("id") for t, a_ in page.tags if t == "section" and "task" in (a_.get("class") or "")] == ["task-0", "task-1"]
    assert len(page.figures("pareto")) == 2 * 4  # four trade-offs per task
    assert "a/icl-4shot: accuracy 0.5000, 0 trainable" in "".join(page.text)  # plotted in the zero slot
    assert "no per-epoch record" in html and "failed: ValueError: bad &lt;script&gt;" in html
    assert EVIL not in html and EVIL not in outside_code_fences((tmp_path / "out" / "report.md").read_text(encoding="utf-8"))


def test_report_cli_bad_folder(tmp_path: Path):
    proc = run_cli_process("report", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no results.json" in proc.stderr


def _row(name: str, acc: float | None, trainable: int, train_s: float, method: str = "lora") -> Row:
    r = RunResult(name=name, method=method, task="t", backbone="b", seed=0, accuracy=acc,
                  params=ParamCounts(trainable=trainable, total=1000, percent_trainable=trainable / 10),
                  timing=Timing(wall_s=train_s, train_s=train_s),
                  epochs=[EpochRecord(epoch=1, accuracy=acc)])
    return Row(result=r, run=RunDir(Path(".")), path=Path("."), label=name)


def test_best_per_column_skips_the_baseline():
    rows = [_row("majority_class", 0.4, 0, 0.0, method="majority_class"), _row("big", 0.9, 500, 9.0),
            _row("small", 0.7, 20, 2.0), _row("same", 0.9, 100, 3.0)]
    cells = table(rows)
    col = {c.key: i for i, c in enumerate(COLUMNS)}
    best = {k: [rows[i].label for i, r in enumerate(cells) if r[col[k]].best] for k in ("accuracy", "trainable", "train_s")}
    assert best == {"accuracy": ["big", "same"], "trainable": ["small"], "train_s": ["small"]}


def test_pareto_frontier():
    pts = [Point("a", 100, 0.8), Point("b", 10, 0.6), Point("c", 50, 0.55), Point("d", 0, 0.5),
           Point("e", 1000, 0.8), Point("f", 2000, 0.9)]
    assert [pts[i].label for i in pareto_frontier(pts)] == ["d", "b", "a", "f"]
    page = parse(pareto_svg(pts, baseline=0.33))
    assert sum(1 for t, _ in page.tags if t == "circle") == len(pts)
    assert any(a.get("class") == "frontier" for t, a in page.tags if t == "polyline")


def _browser() -> tuple[str, str]:
    """Chromium and its driver, or a skip that says how to get them."""
    import shutil as sh

    browser = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := sh.which(n))), None)
    driver = sh.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("browser test: Chromium or chromedriver not installed and not installable here "
                    "(Debian: apt-get install chromium chromium-driver; .ci/run does this)")
    return browser, driver


def test_report_in_headless_chromium(tiny_run: Path, tmp_path: Path):
    """A real browser opens the file URL: no console errors, every figure laid out with a size."""
    browser, driver_path = _browser()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    a = tmp_path / "a"
    shutil.copytree(tiny_run, a, ignore=shutil.ignore_patterns("adapter"))
    add_other_rows(a)  # the zero-trainable and failed rows must render too
    from peftlab.report.write import write_report

    _, html = write_report([a])
    opts = webdriver.ChromeOptions()
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--window-size=1280,900", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.binary_location = browser
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.set_page_load_timeout(20)
        drv.get(html.as_uri())
        assert drv.title.startswith("peftlab report")
        shot = drv.get_screenshot_as_png()
        (tmp_path / "report.png").write_bytes(shot)
        sizes = drv.execute_script(
            "return [...document.querySelectorAll('figure.fig')].map(f => {"
            " const r = f.querySelector('svg').getBoundingClientRect();"
            " return [f.dataset.kind, f.dataset.method || '', r.width, r.height]; })")
        n_scripts = drv.execute_script("return document.scripts.length")
        errors = [e for e in drv.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    finally:
        drv.quit()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
    assert errors == []
    assert n_scripts == 0
    kinds = {k for k, *_ in sizes}
    assert {"pareto", "time", "memory", "curves", "confusion", "per-class-f1"} <= kinds
    assert len(sizes) >= 10
    assert all(w > 50 and h > 30 for _, _, w, h in sizes), sizes


def test_code_fence_cannot_be_closed_by_its_content():
    from peftlab.report.render_md import cell, fenced

    block = fenced("label: x\n```\n<b>out</b>", "yaml")
    assert block.startswith("````yaml\n") and block.endswith("\n````")
    assert outside_code_fences("before\n" + block + "\nafter") == "before\n\nafter"
    assert cell("a|b\n<i>") == "a\\|b &lt;i&gt;"


def test_run_writes_predictions_and_the_paired_comparison(tiny_run: Path):
    """Every trained row and the baseline leave predictions.jsonl whose answers give the row's
    accuracy; comparison.md/csv and the report show the Wilson interval and the paired verdict."""
    import csv

    import numpy as np

    from peftlab.report.paired import BEST, wilson_interval
    from peftlab.results import read_predictions

    for name in ("majority_class", "linear_probe", "lora"):
        res = read_result(tiny_run / name / "results.json")
        preds = read_predictions(tiny_run / name / "predictions.jsonl")
        assert len(preds.index) == res.n_eval == 24 and preds.labels == res.labels, name
        assert float(np.mean(preds.pred == preds.gold)) == pytest.approx(res.accuracy), name
        assert np.allclose(preds.probs.sum(1), 1.0), name
    rows = {r["method"]: r for r in csv.DictReader((tiny_run / "comparison.csv").open())}
    assert sum(r["vs_best"] == BEST for r in rows.values()) == 1 and rows["majority_class"]["vs_best"] != BEST
    assert all(r["vs_best"] in ("best", "better", "worse", "not distinguishable") for r in rows.values())
    lora = read_result(tiny_run / "lora" / "results.json")
    lo, hi = wilson_interval(lora.accuracy * 24, 24)
    assert float(rows["lora"]["accuracy_ci_low"]) == pytest.approx(lo, abs=1e-4)
    for text in ((tiny_run / "comparison.md").read_text(), (tiny_run / "report.md").read_text(),
                 (tiny_run / "report.html").read_text()):
        assert "accuracy 95% CI" in text and "vs best (paired)" in text and f"[{lo:.3f}, {hi:.3f}]" in text
        assert "McNemar" in text


def test_report_rows_without_predictions_say_dash(tiny_run: Path, tmp_path: Path):
    """Older results (no predictions.jsonl) and failed rows are shown as "-", never judged; when
    the most accurate row is such a row, nobody is judged (no silent second-best)."""
    from peftlab.report.collect import collect

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    add_other_rows(run)
    col = {c.key: i for i, c in enumerate(COLUMNS)}

    def verdicts(others: float) -> dict[str, str]:
        """With the rows lacking predictions at accuracy ``others``."""
        for name in ("icl-4shot", "zs-no-params"):
            old = read_result(run / name / "results.json")
            old.model_copy(update={"accuracy": others}).write(run / name)
        rows = collect([run])
        return {r.label: c[col["vs_best"]].text for r, c in zip(rows, table(rows))}

    low = verdicts(0.0)
    assert low["icl-4shot"] == low["broken"] == low["zs-no-params"] == "-"
    assert list(low.values()).count("best") == 1 and low["majority_class"] != "-"
    assert set(verdicts(1.0).values()) == {"-"}
    rows = collect([run])
    ci = {r.label: c[col["accuracy_ci"]].text for r, c in zip(rows, table(rows))}
    assert ci["broken"] == "" and ci["lora"].startswith("[")


def test_calibration_columns_and_reliability_diagrams(tiny_run: Path):
    """NLL, Brier and ECE from each row's predictions.jsonl in comparison.md/csv and report.md/html;
    one reliability diagram per row in report.html; the same numbers everywhere."""
    import csv

    from peftlab.report.calibration import calibration_of
    from peftlab.results import read_predictions

    rows = {r["method"]: r for r in csv.DictReader((tiny_run / "comparison.csv").open())}
    md, report_md = (tiny_run / "comparison.md").read_text(), (tiny_run / "report.md").read_text()
    html = (tiny_run / "report.html").read_text()
    for text in (md, report_md, html):
        assert "NLL" in text and "Brier" in text and "ECE" in text
    for name in ("majority_class", "linear_probe", "lora"):
        cal = calibration_of(read_predictions(tiny_run / name / "predictions.jsonl"))
        assert cal is not None and 0 <= cal.ece <= 1 and 0 <= cal.brier <= 2 and cal.nll > 0
        assert float(rows[name]["nll"]) == pytest.approx(cal.nll, abs=1e-4)
        assert float(rows[name]["ece_adaptive"]) == pytest.approx(cal.adaptive_ece, abs=1e-4)
        assert rows[name]["ece_uncalibrated"] == ""  # nothing was calibrated after scoring
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} |"))
        assert f"| {cal.nll:.3f} | {cal.brier:.3f} | {cal.ece:.3f} |" in line
        assert f"ECE {cal.ece:.3f} (15 equal-width bins), adaptive ECE {cal.adaptive_ece:.3f}" in report_md
    page = parse(html)
    assert {f["data-method"] for f in page.figures("reliability")} == {"majority_class", "linear_probe", "lora"}
    assert html.count('class="diagonal"') == 3


def test_report_pareto_choice_and_bad_value(tiny_run: Path, tmp_path: Path):
    """``--pareto memory`` names the memory frontier in report.md and draws it first; a bad value
    is one line on stderr and exit code 2, before anything is written."""
    from conftest import run_cli

    default = (tiny_run / "report.md").read_text()
    assert "Pareto frontier (accuracy vs trainable parameters)" in default
    proc = run_cli("report", str(tiny_run), "--out", str(tmp_path / "mem"), "--pareto", "memory")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "mem" / "report.md").read_text()
    assert "Pareto frontier (accuracy vs peak memory)" in md and "accuracy vs trainable parameters)" not in md
    page = parse((tmp_path / "mem" / "report.html").read_text())
    figs = page.figures("pareto")
    assert [f["data-axis"] for f in figs] == ["memory", "params", "time", "size"] and figs[0].get("data-headline") == "1"
    bad = run_cli("report", str(tiny_run), "--out", str(tmp_path / "bad"), "--pareto", "speed")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--pareto speed" in bad.stderr
    assert "memory, params, size, time" in bad.stderr and not (tmp_path / "bad").exists()


def test_report_mends_kind_column_and_effective_hyperparameters(tiny_run: Path):
    """No "kind" column when every row is named after its method; the hyperparameters say the
    epochs and backbone the row ran with, never null."""
    md = (tiny_run / "report.md").read_text()
    head = next(ln for ln in md.splitlines() if ln.startswith("| method |"))
    assert "| kind |" not in head and "### lora\n" in md and "### lora (lora)" not in md
    hyper = [ln for ln in md.splitlines() if ln.startswith("hyperparameters:")]
    assert len(hyper) == 2 and not any("null" in ln for ln in hyper)
    lora = read_result(tiny_run / "lora" / "results.json")
    assert lora.method_params["epochs"] is None  # results.json keeps what the config said
    assert any('"epochs": 2' in ln and f'"backbone": "{lora.backbone}"' in ln and '"r": 2' in ln
               and '"target_modules": ["query", "value"]' in ln for ln in hyper)  # as its saved adapter says
    assert any('"epochs": 3' in ln and '"method": "linear_probe"' in ln for ln in hyper)


def test_kind_column_shown_when_a_name_differs():
    from peftlab.report.table import columns_for

    same = [_row("lora", 0.5, 10, 1.0), _row("full", 0.6, 100, 2.0, method="full")]
    assert "kind" not in [c.key for c in columns_for(same)]
    assert "kind" in [c.key for c in columns_for(same + [_row("lora-r8", 0.7, 20, 1.0)])]


def test_dropped_eval_duplicates_said_once_per_task():
    from peftlab.report.render_md import render_md

    rows = [_row("majority_class", 0.4, 0, 0.0, method="majority_class"), _row("a", 0.9, 500, 9.0),
            _row("b", 0.7, 20, 2.0)]
    for r in rows:
        r.result.details["eval_duplicates_dropped"] = 2
    md = render_md(rows)
    assert md.count("2 evaluation examples whose text also occurs in the training split were dropped") == 1
