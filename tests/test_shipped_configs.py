"""Every experiment config shipped in configs/ validates against today's schema (compose-scenario
configs are checked as scenarios by tests/test_compose_scenarios.py), so a renamed field or a
removed method cannot leave a shipped config broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftlab.config import load_config

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")
                 if not p.stem.startswith("compose_"))


def test_the_shipped_configs_are_found():
    assert {"drugreview", "all_methods", "peft_zoo", "icl_drugreview", "rotten_tomatoes"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.methods and cfg.output_dir
