"""A run's output folder: whether to continue the run in it, what is written before and after.

Under ``accelerate launch`` every process decides the same way and rank 0 alone writes.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Literal

from peftlab.config import ExperimentConfig, dump_config
from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import atomic_write_json, atomic_write_text
from peftlab.infra.launcher import launcher_record
from peftlab.report.collect import COMMAND_FILE
from peftlab.infra.distributed import barrier, is_main
from peftlab.infra.distributed import start as start_distributed
from peftlab.runners.rows import say
from peftlab.infra.threads import apply_threads
from peftlab.report.write import write_report


#: whole-run summaries, rewritten at the end of every run
COMPARISON_FILES = ("comparison.md", "comparison.csv", "report.md", "report.html")


ResumeMode = Literal["auto", "resume", "fresh"]


def decide_resume(out: Path, config_text: str, mode: ResumeMode) -> bool:
    """Whether to continue the run already in ``out``: only ever for the very same config.

    ``auto`` (re-running the same command) continues when ``out`` holds this config, and starts
    over otherwise; ``resume`` insists on continuing; ``fresh`` always starts over.
    """
    previous = out / "config.yaml"
    same = previous.is_file() and previous.read_text(encoding="utf-8") == config_text
    if mode == "resume" and not previous.is_file():
        raise PeftlabError(f"--resume: {out} holds no run to resume (no config.yaml)")
    if mode == "resume" and not same:
        raise PeftlabError(f"--resume: {previous} is a different config; resuming needs the same one (drop --resume to start over)")
    return same and mode != "fresh"


def prepare_output(cfg: ExperimentConfig, resume: ResumeMode = "fresh",
                   command: list[str] | None = None) -> tuple[Path, bool]:
    """Create the run folder, store the resolved config in it, set the torch threads (peftlab.infra.threads).

    Returns the folder and whether the run already in it is continued (see ``decide_resume``).
    Under ``accelerate launch`` every process decides before rank 0 alone changes the folder.
    """
    out = Path(cfg.output_dir)
    config_text = dump_config(cfg)
    apply_threads(cfg.train.num_threads)
    start_distributed(cfg.train.device == "cpu")
    try:
        reuse = decide_resume(out, config_text, resume)
        barrier()
        if not is_main():
            return out, reuse
        out.mkdir(parents=True, exist_ok=True)
        for stale in COMPARISON_FILES:  # rewritten at the end: never left looking complete meanwhile
            (out / stale).unlink(missing_ok=True)
        atomic_write_text(out / "config.yaml", config_text)
        if command:
            launcher = launcher_record()  # accelerate launch / torchrun: what the re-run line needs
            atomic_write_json(out / COMMAND_FILE, {"argv": command, "cwd": str(Path.cwd()),
                                                   **({"launcher": launcher} if launcher else {})})
    except OSError as exc:
        raise PeftlabError(f"output_dir {out}: cannot write ({exc.strerror or exc})") from None
    return out, reuse


def write_run_report(out: Path, quiet: bool) -> None:
    """report.md / report.html beside the results; results are already safe if this fails."""
    try:
        _, html = write_report([out], out)
        say(quiet, f"report: {html}")
    except Exception as exc:  # a report bug must not turn a finished run into a failed one
        traceback.print_exc()
        print(f"error: report not written ({exc}); retry with: peftlab report {out}", file=sys.stderr)
