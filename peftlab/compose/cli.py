"""``peftlab compose``: the command (registered on the main app in :mod:`peftlab.cli`).

Like peftlab/cli.py, it imports the composition code inside the command, so the CLI starts fast.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from peftlab.infra.errors import PeftlabError

if TYPE_CHECKING:
    from peftlab.compose.merge import MergeSpec


def compose_command(
    expression: Annotated[str, typer.Argument(help="e.g. '0.5*pos + 0.5*neg', 'base - 0.8*toxic', 'a + (b - c)'")],
    adapters: Annotated[list[str], typer.Option("--adapters", "-a", help="NAME=PATH (repeat, or comma-separate); "
                                                 "PATH: a peft adapter folder or a peftlab RUN_DIR/METHOD")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    mode: Annotated[str, typer.Option(help="LoRA: parameter (combine A and B, as the paper) or weight (exact sum of B A)")] = "parameter",
    rank: Annotated[Optional[int], typer.Option(help="weight mode: SVD re-factorisation to this rank (default: exact concatenation)")] = None,
    head: Annotated[str, typer.Option(help="classifier head: average (of positive terms), first, or an adapter NAME")] = "average",
    merge: Annotated[bool, typer.Option("--merge", help="write the base model with the composition merged in (safetensors)")] = False,
    base: Annotated[Optional[str], typer.Option(help="base model (alias, path or hub id) if the adapters do not name one usable here")] = None,
    sweep: Annotated[Optional[str], typer.Option(help="NAME=START:STOP:STEP, e.g. lambda=0:1:0.1; needs --eval")] = None,
    eval_: Annotated[Optional[str], typer.Option("--eval", help="validation data for --sweep: a peftlab config (its eval split) or a builtin task")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    force_base: Annotated[bool, typer.Option("--force-base",
                                             help="compose/load adapters even if recorded for another base model")] = False,
    combine: Annotated[str, typer.Option(help="linear (Zhang et al., default), or a merge of the terms' task vectors: "
                                         "ties, dare_linear, dare_ties, magnitude_prune, task_arithmetic")] = "linear",
    density: Annotated[Optional[float], typer.Option(help="ties/dare/magnitude_prune: fraction of each task vector kept, in (0, 1]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="dare_linear/dare_ties: seed of the random drop (default 0)")] = None,
) -> None:
    """Compose saved LoRA or (IA)^3 adapters with arithmetic or a merge (TIES, DARE); optionally sweep a coefficient."""
    from peftlab.compose.core import compose, load_pool, parse_adapter_args, write
    from peftlab.compose.expr import variables_of
    from peftlab.compose.merge import DENSITY, MergeSpec

    names = parse_adapter_args([x for item in adapters for x in item.split(",") if x])
    free = variables_of(expression, list(names))
    if sweep is None and free:
        raise PeftlabError(f"expression uses {free[0]!r}, which is no adapter: give --sweep {free[0]}=START:STOP:STEP or --adapters {free[0]}=PATH")
    if (sweep is None) != (eval_ is None):
        raise PeftlabError("--sweep and --eval go together (the sweep is scored on --eval's validation split)")
    spec = MergeSpec(combine, density, seed)
    sweeps_density = sweep is not None and sweep.partition("=")[0] == DENSITY
    if sweeps_density:
        spec = _density_sweep_spec(spec, free)
    else:
        spec.checked()
    pool = load_pool(names)
    variables: dict[str, float] = {}
    if sweep is not None:
        variables = _sweep(expression, pool, sweep, eval_ or "", free, out, mode, rank, head, base, quiet, force_base, spec)
        if sweeps_density:
            spec, variables = spec.with_density(variables.pop(DENSITY)), {}
    composed, record = compose(expression, pool, mode, rank, head, variables, base, force_base, spec)
    if merge:
        from peftlab.compose.model import merge_to

        created = not out.exists()
        try:
            adapter_dir = write(composed, record, out / "adapter")
            merge_to(adapter_dir, composed, out, base, force_base)
        except PeftlabError:  # e.g. a base the adapter was not made for: leave no half-written output
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        print(f"merged model written to {out} (adapter in {adapter_dir})")
    else:
        write(composed, record, out)
        print(f"composed adapter written to {out}: {json.dumps(record['coefficients'])}")


def _density_sweep_spec(merge: "MergeSpec", free: list[str]) -> "MergeSpec":
    """``--sweep density=...``: the merge's density is the swept value, so the combine must use one,
    ``--density`` must not be given too, and the expression must have no variable left unbound."""
    from peftlab.compose.merge import DENSITY, DENSITY_COMBINES

    if merge.combine not in DENSITY_COMBINES:
        raise PeftlabError(f"--sweep {DENSITY}: --combine {merge.combine} has no density (it applies to {', '.join(DENSITY_COMBINES)})")
    if merge.density is not None:
        raise PeftlabError(f"--sweep {DENSITY} and --density {merge.density:g} both set the density; give one")
    if free:
        raise PeftlabError(f"--sweep {DENSITY}: the expression's variable {free[0]!r} needs a number (one value is swept at a time)")
    merge.with_density(1.0)  # the other options are checked before any adapter is read
    return merge


def _sweep(expression: str, pool: dict, sweep: str, eval_arg: str, free: list[str], out: Path, mode: str,
           rank: int | None, head: str, base: str | None, quiet: bool, force_base: bool,
           merge: "MergeSpec") -> dict[str, float]:
    from peftlab.compose.merge import DENSITY
    from peftlab.compose.sweep import load_validation, parse_sweep, run_sweep, write_sweep

    var, values = parse_sweep(sweep)
    if var == DENSITY:
        for v in values:  # every point's density is in (0, 1], before the validation data is read
            merge.with_density(v)
    elif var not in free:
        raise PeftlabError(f"--sweep {var}: the expression has no variable {var!r} (variables: {free or 'none'})")
    if len(free) > 1:
        raise PeftlabError(f"expression has several variables {free}; sweep one and write the others as numbers")
    val = load_validation(eval_arg)
    results, best = run_sweep(expression, pool, var, values, val, mode, rank, head, base, quiet, force_base, merge)
    write_sweep(results, var, best, expression, out)
    print((out / "sweep.md").read_text(encoding="utf-8"))
    print(f"best {var} = {values[best]:g}; table and plot in {out}/sweep.md, sweep.png", file=sys.stderr)
    return {var: values[best]}


def scenario_command(
    config: Annotated[Path, typer.Argument(help="a configs/compose_*.yaml scenario")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. n_train=120")] = None,
    reuse: Annotated[bool, typer.Option("--reuse", help="keep modules already trained in OUTPUT_DIR")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run a composition scenario (generalisation, negation, analogy): train, compose, sweep, report."""
    from peftlab.compose.scenario_run import run_scenario
    from peftlab.compose.scenarios import load_scenario

    cfg = load_scenario(config, overrides)
    command = " ".join(["peftlab compose-scenario", str(config), *(overrides or [])])
    print(run_scenario(cfg, reuse=reuse, quiet=quiet, command=command))
