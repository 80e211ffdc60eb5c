"""In-context rows resume like trained rows: a re-run of a multi-method config keeps finished ICL
rows (with and without a trained LM adapter) and runs only what is left."""

from __future__ import annotations

import json

from test_icl_run import _config, _icl, tiny_causal  # noqa: F401  (tiny_causal: a fixture)

from peftlab.config import validate_raw
from peftlab.infra.fingerprint import FINGERPRINT_FILE
from peftlab.runners import experiment as exp


def test_rerun_keeps_finished_icl_rows(tiny_causal, tiny_bert, tiny_csv, tmp_path, monkeypatch):  # noqa: F811
    raw = _config(tiny_causal, tiny_bert, tiny_csv, tmp_path / "run", [
        _icl("zero_shot", tiny_causal),
        _icl("lm_lora", tiny_causal, method="lm_lora", lr=5e-3),
        {"method": "linear_probe", "lr": 1e-2},
    ])
    cfg = validate_raw(raw)
    first = {r.name: r for r in exp.run_experiment(cfg, quiet=True)}
    assert all(r.status == "ok" for r in first.values()), {n: r.error for n, r in first.items()}
    out = tmp_path / "run"
    # every saved adapter records its base, the LM adapter of an in-context row too
    fp = json.loads((out / "lm_lora" / "adapter" / FINGERPRINT_FILE).read_text())
    assert fp["base"] == tiny_causal and len(fp["embedding_sha256"]) == 64
    saved = {n: (out / n / "results.json").read_text() for n in ("zero_shot", "lm_lora", "linear_probe")}
    (out / "linear_probe" / "results.json").unlink()  # as if killed before this row finished

    ran: list[str] = []
    real_icl, real_trained = exp.run_icl, exp.run_method
    monkeypatch.setattr(exp, "run_icl", lambda cfg, method, params, *a, **k: ran.append(params.label) or real_icl(cfg, method, params, *a, **k))
    monkeypatch.setattr(exp, "run_method", lambda cfg, params, *a, **k: ran.append(params.label) or real_trained(cfg, params, *a, **k))
    again = {r.name: r for r in exp.run_experiment(cfg, quiet=True)}
    assert ran == ["linear_probe"]
    assert {n: (out / n / "results.json").read_text() for n in ("zero_shot", "lm_lora")} == \
        {n: saved[n] for n in ("zero_shot", "lm_lora")}
    assert again["zero_shot"].accuracy == first["zero_shot"].accuracy
    assert again["linear_probe"].accuracy == first["linear_probe"].accuracy
    assert (out / "comparison.md").is_file()
