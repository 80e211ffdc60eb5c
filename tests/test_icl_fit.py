"""Prompts longer than the model's context: demonstrations go first, then the input's beginning;
the template, its answer cue and the verbalizer continuation always stay (peftlab.icl.fit)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import make_tokenizer, tiny_config
from peftlab.infra.errors import PeftlabError
from peftlab.icl.fit import Window, context_limit, fit_prompt, left_truncate
from peftlab.icl.scoring import PrefixScorer, encode_requests, score_brute
from peftlab.methods.icl import IclParams
from peftlab.prompts.template import Demo
from peftlab.runners.icl import make_prompting

LIMIT = 24
VERB = {"positive": " good", "negative": " bad not very", "neutral": " meh"}


@pytest.fixture(scope="module")
def short_lm(tmp_path_factory):
    """A tiny Llama whose position table holds only LIMIT tokens."""
    torch.manual_seed(0)
    cfg: LlamaConfig = tiny_config("llama")
    cfg.max_position_embeddings = LIMIT
    tok = make_tokenizer(tmp_path_factory.mktemp("tok"), with_cls=False)
    return LlamaForCausalLM(cfg).eval(), tok


def _prompting(tok, **kw):
    params = IclParams(**{"instruction": "the drug", "example": "{text} so it was", "verbalizers": VERB,
                          "chat": "off", **kw})
    return make_prompting(params, tok, ["negative", "neutral", "positive"], LIMIT)


def _n(tok, s: str) -> int:
    return len(tok(s).input_ids)


def test_context_limit_is_the_position_table(short_lm):
    model, tok = short_lm
    assert context_limit(model, tok) == LIMIT


def test_fitting_prompt_is_untouched(short_lm):
    _, tok = short_lm
    p = _prompting(tok)
    demos = [Demo("good drug", None, " good")]
    assert p.context(demos, "pain day", None) == "the drug\n\ngood drug so it was good\n\npain day so it was"
    assert p.shortened == 0


def test_demonstrations_go_first_farthest_first(short_lm):
    _, tok = short_lm
    p = _prompting(tok)
    demos = [Demo("awful awful awful awful awful", None, " bad not very"), Demo("great great", None, " good")]
    out = p.context(demos, "the drug was okay", None)
    # the far demonstration is gone, the near one and the whole query stay
    assert "awful" not in out and "great great so it was good" in out
    assert out.endswith("the drug was okay so it was") and out.startswith("the drug")
    assert max(_n(tok, out + a) for a in VERB.values()) <= LIMIT
    assert p.shortened == 1


def test_long_input_is_left_truncated_keeping_template_and_answer(short_lm):
    model, tok = short_lm
    p = _prompting(tok)
    text = " ".join(["pain"] * 30 + ["sleep", "really", "fine"])
    out = p.context([Demo("good", None, " good")], text, None)
    assert "so it was good" not in out  # the demonstration went first
    assert out.startswith("the drug\n\n") and out.endswith("sleep really fine so it was")  # input's end kept
    longest = max(_n(tok, out + a) for a in VERB.values())
    assert longest == LIMIT  # cut no more than needed: the longest answer exactly fills the context
    # the fitted prompt scores every verbalizer whole within the position table, exactly
    enc = encode_requests(tok, [out], [list(VERB.values())])
    assert [len(c) for c in enc.continuations[0]] == [1, 3, 1]
    assert len(enc.contexts[0]) + 3 <= LIMIT
    torch.testing.assert_close(torch.tensor(PrefixScorer(model, 0).score(enc)), torch.tensor(score_brute(model, enc)),
                               atol=1e-4, rtol=1e-5)


def test_pair_is_cut_after_text(short_lm):
    _, tok = short_lm
    render = lambda ds, t, pr: f"the drug {t} so {pr} was"  # noqa: E731
    fitted = fit_prompt(render, tok, Window(12, (" good",)), [], "pain pain pain", "day " * 20 + "okay", "t")
    assert fitted.truncated_text and fitted.prompt.startswith("the drug  so") and fitted.prompt.endswith("okay was")
    assert _n(tok, fitted.prompt + " good") == 12


def test_generation_room_is_reserved(short_lm):
    _, tok = short_lm
    p = _prompting(tok)
    out = p.context([], "pain " * 20 + "fine", None, generate=10)
    assert _n(tok, out) + 10 <= LIMIT and out.endswith("fine so it was")


def test_template_that_cannot_fit_is_one_error_line(short_lm):
    _, tok = short_lm
    p = _prompting(tok, instruction=" ".join(["the drug was"] * 10))
    with pytest.raises(PeftlabError, match="template 'sentiment'.*context of 24") as err:
        p.context([], "good", None)
    assert "\n" not in str(err.value)


def test_left_truncate_cuts_at_token_boundaries(short_lm):
    _, tok = short_lm
    assert left_truncate(tok, "the drug  was good", 2) == "was good"
    assert left_truncate(tok, "the drug", 5) == "" and left_truncate(tok, "the", 0) == "the"


def test_runner_fits_prompts_and_flags_the_row(short_lm, tiny_csv, tmp_path):
    from peftlab.config import validate_raw
    from peftlab.runners.experiment import run_experiment

    model, tok = short_lm
    model.save_pretrained(str(tmp_path / "lm"))
    tok.save_pretrained(str(tmp_path / "lm"))
    train, ev = tiny_csv
    row = {"backbone": str(tmp_path / "lm"), "instruction": "the drug", "example": "{text} so it was",
           "verbalizers": VERB, "chat": "off", "batch_size": 4}
    cfg = validate_raw({
        "backbone": str(tmp_path / "lm"), "task": {"source": "csv", "train_file": str(train), "eval_file": str(ev)},
        "methods": [{"method": "icl", "name": "zero", **row}, {"method": "icl", "name": "four", "shots": 4, **row}],
        "train": {"num_threads": 1, "device": "cpu"}, "output_dir": str(tmp_path / "run"),
    })
    res = {r.name: r for r in run_experiment(cfg, quiet=True)}
    assert all(r.status == "ok" for r in res.values()), {n: r.error for n, r in res.items()}
    assert "prompt_shortened" not in res["zero"].flags  # short reviews fit without demonstrations
    assert "prompt_shortened" in res["four"].flags  # four demonstrations do not fit in 24 tokens
