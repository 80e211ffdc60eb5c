"""The ``peftlab`` command line: run, validate, plan, predict, report, list.

User errors (PeftlabError) print one line and exit with code 2; no traceback.
Each command imports what it runs inside its own body: ``peftlab --help`` then starts without
loading torch, transformers or any method (the package's one deliberate exception
to imports at the top, with compose/cli.py).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from peftlab.infra.errors import PeftlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compare ways of adapting pretrained models to classification tasks.")

Overrides = Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. train.epochs=1")]


@app.command()
def run(config: Path, overrides: Overrides = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
        resume: Annotated[bool, typer.Option("--resume", help="continue the run in output_dir (same config), or fail")] = False,
        fresh: Annotated[bool, typer.Option("--fresh", help="start over even if output_dir holds this run")] = False,
        parallel: Annotated[int, typer.Option("--parallel", help="run up to N methods at once, one worker process each")] = 1) -> None:
    """Run every method of CONFIG and write results, adapters and a comparison.

    Re-running the same command on the same output_dir continues where it stopped: finished
    methods are kept, the others resume from their newest checkpoint.
    """
    from peftlab.config import load_config
    from peftlab.runners.experiment import run_experiment

    if resume and fresh:
        raise PeftlabError("--resume and --fresh contradict each other; give one")
    if parallel < 1:
        raise PeftlabError(f"--parallel {parallel}: give the number of worker processes, 1 or more")
    cfg = load_config(config, overrides)
    mode = "resume" if resume else "fresh" if fresh else "auto"
    if parallel > 1:
        from peftlab.runners.parallel import run_parallel

        results = run_parallel(cfg, parallel, quiet=quiet, resume=mode, command=["peftlab", *sys.argv[1:]])
    else:
        results = run_experiment(cfg, quiet=quiet, resume=mode, command=["peftlab", *sys.argv[1:]])
    failed = [r.name for r in results if r.status != "ok"]
    from peftlab.infra.distributed import is_main

    if not is_main():  # under accelerate launch rank 0 alone writes and prints the comparison
        raise typer.Exit(1 if failed else 0)
    print((Path(cfg.output_dir) / "comparison.md").read_text(encoding="utf-8"))
    if failed:
        print(f"error: failed methods: {', '.join(failed)} (see their results.json)", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def validate(config: Path, overrides: Overrides = None) -> None:
    """Check CONFIG (schema, values, data files and columns) without loading any model; a
    compose-scenario config (configs/compose_*.yaml) is checked as one."""
    from peftlab.compose.scenarios import check_scenario, is_scenario
    from peftlab.config import load_config
    from peftlab.tasks import check_task

    if is_scenario(config):
        print(check_scenario(config, overrides))
        return
    cfg = load_config(config, overrides)
    check_task(cfg.task)
    from peftlab.infra.tracking import check_trackers

    check_trackers(cfg.train.log_to)
    print(f"ok: {config} ({len(cfg.methods)} methods: {', '.join(m.label for m in cfg.methods)})")


@app.command()
def plan(config: Path, overrides: Overrides = None) -> None:
    """Estimate each method's memory (base at fp32/bf16/8-bit/4-bit, trainable, optimizer,
    activations) from the backbone's config alone, against the free RAM or GPU memory."""
    from peftlab.config import load_config
    from peftlab.estimate.plan import format_plan, make_plan
    from peftlab.runners.experiment import preflight

    cfg = load_config(config, overrides)
    if cfg.task.modality == "text":
        preflight(cfg)
    print(format_plan(make_plan(cfg), cfg))


@app.command()
def predict(method_dir: Path, texts: Annotated[Optional[list[str]], typer.Argument()] = None,
            file: Annotated[Optional[Path], typer.Option("--file", "-f", help="one text per line")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="JSON lines output")] = False,
            force_base: Annotated[bool, typer.Option("--force-base", help="load the adapter even if it was trained on another base model")] = False) -> None:
    """Classify TEXTS (or the lines of --file) with a trained RUN_DIR/METHOD; image runs take image paths."""
    if not (method_dir / "results.json").is_file() or not (method_dir.parent / "config.yaml").is_file():
        raise PeftlabError(f"{method_dir} is not a method folder of a peftlab run (expected RUN_DIR/METHOD)")
    from peftlab.runners.predict import load_predictor

    items = list(texts or [])
    if file is not None:
        try:
            items += [ln for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise PeftlabError(f"--file {file}: cannot read ({exc})") from None
    if not items:
        raise PeftlabError("nothing to classify: give texts or --file")
    from peftlab.config import load_config

    key = "image" if load_config(method_dir.parent / "config.yaml").task.modality == "image" else "text"
    if key == "image":  # the items are image paths
        from peftlab.images.predict import load_image_predictor

        pred = load_image_predictor(method_dir, force_base)
    else:
        pred = load_predictor(method_dir, force_base)
    probs = pred.probabilities(items)
    for text, p in zip(items, probs):
        best = int(p.argmax())
        if as_json:
            print(json.dumps({key: text, "label": pred.labels[best],
                              "probabilities": dict(zip(pred.labels, map(float, p)))}))
        else:
            dist = "  ".join(f"{n}={v:.3f}" for n, v in zip(pred.labels, p))
            print(f"{pred.labels[best]}\t{dist}\t{text[:80]}")


@app.command()
def report(run_dirs: Annotated[list[Path], typer.Argument(help="run folders (or method folders) to compare")],
           out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for report.md and report.html "
                                                        "(default: the run folder; ./report for several)")] = None,
           pareto: Annotated[str, typer.Option("--pareto", help="the trade-off report.md names and report.html draws "
                                               "first: params, memory, time or size")] = "params") -> None:
    """Write report.md and report.html (self-contained, no network) for one or more runs."""
    from peftlab.report.write import check_pareto, write_report

    md, html = write_report(run_dirs, out, check_pareto(pareto))
    print(f"wrote {md}\nwrote {html}")


@app.command("list")
def list_() -> None:
    """Methods, backbone aliases and builtin tasks."""
    from peftlab.backbones.loaders import ALIASES
    from peftlab.methods import METHODS
    from peftlab.tasks.builtin import BUILTIN_TASKS

    print("methods:        " + ", ".join(METHODS.names()))
    print("backbone alias: " + ", ".join(ALIASES.names()))
    from peftlab.images.backbones import IMAGE_ALIASES

    print("image backbone: " + ", ".join(IMAGE_ALIASES.names()) + " (or a CLIP / image-classifier folder or hub id)")
    print("builtin tasks:  " + ", ".join(BUILTIN_TASKS.names()))


# peftlab compose EXPR --adapters NAME=PATH ... --out DIR (arithmetic on trained modules, issue 6)
from peftlab.compose.cli import compose_command, scenario_command  # noqa: E402

app.command("compose")(compose_command)
app.command("compose-scenario")(scenario_command)


def _quiet_libraries() -> None:
    """bitsandbytes warns at import that its optional CPU kernel (a Hub download) is missing."""
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _is_click_error(exc: BaseException) -> bool:
    """A click usage error, from whichever click is in use.

    typer >= 0.29 ships its own copy of click (``typer._click``), whose ``ClickException`` is not
    ``click.ClickException``; older typers raise the real click's. Matching the class by name in
    the exception's MRO works for both, and for any later vendoring, without importing either.
    """
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "format_message")


def usage_error_line(exc: Exception) -> str:
    """One line for a CLI usage error: click's own message plus where to look for help."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(ctx, "command_path", "") else ""
    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    return f"error: {message}{where}"


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    try:
        code = app(standalone_mode=False)  # a typer.Exit comes back as its code in this mode
        if isinstance(code, int) and code:
            sys.exit(code)
    except PeftlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk, a read-only or vanished folder: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # click usage errors come here in non-standalone mode
        if not _is_click_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `peftlab`: the help text, as click prints it
            exc.show()  # type: ignore[attr-defined]
        else:
            print(usage_error_line(exc), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
