"""Encoder-decoder backbones, T5 family (issue 21), on ``head: classifier`` (T5ForSequenceClassification);
the default ``head: text`` (the verbalizer as the decoder's target) is tests/test_t5_text.py's.

The closed forms from T5-small's configuration alone (no weights): the six trainable counts a
course report checked by hand, each peftlab's trainable count without the head; and, on tiny
random T5s (ReLU and gated-GELU FFNs, encoder and decoder of different depths), counted == closed
form for every method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, T5Config

from conftest import SPECIALS, WORDS
from method_table import _one_thread, assert_counts_match_closed_form, fresh, train_tiny  # noqa: F401  (_one_thread: autouse)
from peftlab.estimate.params import arch_spec, count_params
from peftlab.methods import METHODS

#: t5-small's configuration (T5Config's defaults are t5-small's), three labels for the head
T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, num_labels=3)


def _without_head(method: str, **params: Any) -> int:
    m = METHODS.get(method)
    p = m.Params(**params)
    spec = arch_spec(T5Config(**T5_SMALL))
    m.check(p, spec, "t5")
    return m.derived_trainable(p, spec) - spec.head


@pytest.mark.parametrize(("method", "params", "want"), [
    ("lora", {"r": 8}, 294_912),  # q and v of 6 encoder self-attentions, 6 decoder self- and 6 cross-attentions
    ("lora", {"r": 1}, 36_864),
    ("prompt_tuning", {"num_virtual_tokens": 10}, 5_120),
    ("prompt_tuning", {"num_virtual_tokens": 1}, 512),
    ("pfeiffer", {"bottleneck_size": 8}, 104_544),  # 12 blocks x ((512 + 1) 8 + (8 + 1) 512)
    ("pfeiffer", {"bottleneck_size": 1}, 18_444),
])
def test_the_reports_six_counts_from_t5_smalls_config(method, params, want):
    assert _without_head(method, **params) == want


def test_t5_small_total_counts_the_tied_embedding_once():
    """60.5M: the report's size of T5-small (the shared embedding once, relative biases in block 0 only)."""
    spec = arch_spec(T5Config(**T5_SMALL))
    from peftlab.estimate.params import total_params

    assert total_params(spec) - spec.head == 60_506_624


def tiny_t5_config(gated: bool) -> T5Config:
    return T5Config(vocab_size=25, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
                    num_labels=3, feed_forward_proj="gated-gelu" if gated else "relu", decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=4)


CLOSED_FORM_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("full", {}), ("partial", {"top_k": 1}), ("partial", {"top_k": 3}), ("linear_probe", {}),
    ("lora", {"r": 4}), ("lora", {"r": 2, "target_modules": "all-linear"}), ("ia3", {}),
    ("houlsby", {"bottleneck_size": 4}), ("pfeiffer", {"bottleneck_size": 4}),
]


@pytest.mark.parametrize("gated", [False, True], ids=["relu", "gated-gelu"])
@pytest.mark.parametrize(("method", "params"), CLOSED_FORM_ROWS, ids=lambda x: x if isinstance(x, str) else None)
def test_counted_equals_closed_form_on_a_config_built_t5(gated, method, params):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_t5_config(gated))
    spec = arch_spec(model.config)
    m = METHODS.get(method)
    p = m.Params(**params)
    m.check(p, spec, model.config.model_type)
    trainable, total = count_params(m.prepare(model, p, spec))
    assert (trainable, total) == (m.derived_trainable(p, spec), m.derived_total(p, spec))


# ---- a tiny local T5 folder, like a hub checkpoint: every method through the classifier head ----------------

def make_t5_tokenizer(path: Path) -> None:
    """The tiny word-level tokenizer, appending EOS as T5's does (its classifier pools at the last EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", pair="$A [EOS] $B:1 [EOS]:1",
                                                       special_tokens=[("[EOS]", vocab["[EOS]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    fast.model_input_names = ["input_ids", "attention_mask"]
    fast.save_pretrained(str(path))


def save_tiny_t5(path: Path, gated: bool) -> str:
    """A random tiny T5ForConditionalGeneration (encoder 2 blocks, decoder 3) and its tokenizer."""
    from transformers import T5ForConditionalGeneration

    conf = tiny_t5_config(gated)
    conf.vocab_size = len(SPECIALS) + len(WORDS)
    conf.eos_token_id = SPECIALS.index("[EOS]")
    torch.manual_seed(0)
    T5ForConditionalGeneration(conf).save_pretrained(str(path))
    make_t5_tokenizer(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {g: save_tiny_t5(tmp_path_factory.mktemp(f"tiny-t5-{g}"), g == "gated") for g in ("relu", "gated")}


#: row id -> (method, params): every method the issue lists, on the classifier head
T5_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {"lr": 3e-3}),
    "partial": ("partial", {"lr": 3e-3, "top_k": 1}),
    "linear_probe": ("linear_probe", {"lr": 5e-2}),
    "lora": ("lora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0}),
    "qlora": ("qlora", {"lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.0}),
    "ia3": ("ia3", {"lr": 3e-2}),
    "prompt_tuning": ("prompt_tuning", {"lr": 3e-2, "num_virtual_tokens": 4, "init": "random"}),
    "prompt_tuning_text": ("prompt_tuning", {"lr": 1e-2, "num_virtual_tokens": 3, "init_text": "good bad"}),
    "p_tuning": ("p_tuning", {"lr": 1e-2, "num_virtual_tokens": 4, "encoder_hidden_size": 16}),
    "prefix_tuning": ("prefix_tuning", {"lr": 3e-2, "num_virtual_tokens": 4}),
    "houlsby": ("houlsby", {"lr": 1e-2, "bottleneck_size": 4}),
    "pfeiffer": ("pfeiffer", {"lr": 1e-2, "bottleneck_size": 4, "nonlinearity": "gelu"}),
}
#: rows whose prompts come from a trained encoder: a reload uses the saved prompts (last float bits)
ENCODER_ROWS = {"p_tuning"}


def _row(row: str) -> tuple[Any, Any]:
    name, kw = T5_TABLE[row]
    method = METHODS.get(name)
    return method, method.Params(**kw)


@pytest.mark.parametrize("gated", ["relu", "gated"])
@pytest.mark.parametrize("row", list(T5_TABLE))
def test_counted_equals_closed_form_on_a_t5_folder(tiny_t5, gated, row):
    method, params = _row(row)
    model, _ = fresh(tiny_t5[gated], method, params)
    assert_counts_match_closed_form(method, params, model)


@pytest.mark.parametrize("row", list(T5_TABLE))
def test_t5_trains_only_its_parameters_and_round_trips(tiny_t5, tmp_path: Path, row):
    method, params = _row(row)
    path = tiny_t5["gated" if row in ("lora", "prefix_tuning", "pfeiffer") else "relu"]
    model, tok = fresh(path, method, params)
    base_model, _ = fresh(path)
    run = train_tiny(method, params, model, tok, epochs=4)
    run.assert_trained_exactly_intended()
    method.save(run.model, params, tmp_path / "adapter")
    reloaded, _ = fresh(path, method, params)
    reloaded = method.load(reloaded, params, run.spec, tmp_path / "adapter")
    trained = run.logits(run.model)
    if row in ENCODER_ROWS:
        np.testing.assert_allclose(run.logits(reloaded), trained, rtol=1e-5, atol=1e-6)
    else:
        assert np.array_equal(run.logits(reloaded), trained)
    assert not np.allclose(run.logits(base_model), trained)


@pytest.mark.parametrize("row", ["lora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning"])
def test_t5_peft_adapter_loads_in_plain_peft(tiny_t5, tmp_path: Path, row):
    """``PeftModel.from_pretrained`` on a freshly loaded base gives the same outputs. (Prompt methods
    need the loaded classifier's forward that takes embeddings, peftlab.backbones.encoder_decoder:
    transformers' own T5ForSequenceClassification refuses them; for LoRA and (IA)^3 it is the class's.)"""
    from peft import PeftModel

    from peftlab.backbones.kv_cache import route_prefix_cache

    method, params = _row(row)
    model, tok = fresh(tiny_t5["relu"], method, params)
    model = method.prepare(model, params, arch_spec(model.config))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    method.save(model, params, tmp_path / "a")
    base, _ = fresh(tiny_t5["relu"])
    plain = PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    if row == "prefix_tuning":
        route_prefix_cache(plain)
    model.eval()
    batch = tok(["good drug", "bad day really"], return_tensors="pt", padding=True)
    with torch.no_grad():
        got, want = plain(**batch).logits, model(**batch).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        untouched, _ = fresh(tiny_t5["relu"])
        assert not torch.allclose(untouched.eval()(**batch).logits, want)


def test_t5_classifier_on_embeddings_equals_on_ids(tiny_t5):
    """The forward that takes embeddings (prompt methods) computes what transformers' own forward
    computes on the ids: the decoder reads them shifted right, the head reads the EOS's state."""
    model, tok = fresh(tiny_t5["gated"])
    model.eval()
    batch = tok(["good drug", "bad day really so", "meh"], return_tensors="pt", padding=True)
    with torch.no_grad():
        on_ids = model(**batch).logits
        embeds = model.transformer.shared(batch["input_ids"])
        on_embeds = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(on_embeds, on_ids, rtol=1e-5, atol=1e-6)


def test_a_local_t5_folder_runs_every_listed_method_in_one_config(tiny_t5, tmp_path: Path):
    """The issue's acceptance on ``head: classifier`` (the text head's: tests/test_t5_text.py): full, lora,
    prompt_tuning, prefix_tuning, ia3, houlsby and pfeiffer in one config on a local T5 folder, every row ok, counted == closed form, the fresh head not flagged as a
    newly initialised backbone; then predict and report on its rows."""
    import json

    import yaml

    from conftest import run_cli, write_tiny_csvs
    from peftlab.infra.guards import NEWLY_INITIALISED

    train, evalf = write_tiny_csvs(tmp_path)
    methods = [{"method": "full", "lr": 3e-3}, {"method": "lora", "lr": 1e-2, "r": 4},
               {"method": "prompt_tuning", "lr": 3e-2, "num_virtual_tokens": 4},
               {"method": "prefix_tuning", "lr": 3e-2, "num_virtual_tokens": 4}, {"method": "ia3", "lr": 3e-2},
               {"method": "houlsby", "lr": 1e-2, "bottleneck_size": 4}, {"method": "pfeiffer", "lr": 1e-2, "bottleneck_size": 4}]
    raw = {"name": "t5", "backbone": {"name": tiny_t5["relu"], "head": "classifier"}, "baseline": False,
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)}, "methods": methods,
           "train": {"epochs": 2, "batch_size": 8, "max_length": 32, "device": "cpu", "num_threads": 1},
           "output_dir": str(tmp_path / "runs")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("run", str(tmp_path / "c.yaml"), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for m in methods:
        res = json.loads((tmp_path / "runs" / m["method"] / "results.json").read_text())
        assert res["status"] == "ok", res.get("error")
        assert res["params"]["agree"] is True, (m["method"], res["params"])
        assert "params_mismatch" not in res["flags"] and NEWLY_INITIALISED not in res["flags"], res["flags"]
    for row in ("lora", "prompt_tuning", "prefix_tuning", "houlsby"):
        pred = run_cli("predict", str(tmp_path / "runs" / row), "good drug really", "--json")
        assert pred.returncode == 0, pred.stderr[-2000:]
        assert json.loads(pred.stdout)
    assert run_cli("report", str(tmp_path / "runs")).returncode == 0


def test_plan_on_a_t5_folder_is_a_rough_estimate_that_says_so(tiny_t5, tmp_path: Path):
    """No op-by-op activation walk knows T5: the plan lists every row with its closed-form counts and
    says its activations are the rough rule."""
    import yaml

    from conftest import run_cli, write_tiny_csvs

    train, evalf = write_tiny_csvs(tmp_path)
    raw = {"name": "t5", "backbone": tiny_t5["gated"],
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "full"}, {"method": "lora", "r": 8}, {"method": "pfeiffer", "bottleneck_size": 8}],
           "train": {"device": "cpu"}, "output_dir": str(tmp_path / "runs")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    proc = run_cli("plan", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rough rule" in proc.stdout and "no estimate" not in proc.stdout


def test_t5_rows_take_seeds_lr_search_resume_and_compose(tiny_t5, tmp_path: Path):
    """The generic machinery on T5 rows: two seeds, a learning-rate search, a rerun that keeps the
    finished rows, and LoRA arithmetic (compose, merged into the base) on two seeds' adapters."""
    import json

    import yaml

    from conftest import run_cli, write_tiny_csvs

    train, evalf = write_tiny_csvs(tmp_path)
    raw = {"name": "t5", "backbone": {"name": tiny_t5["gated"], "head": "classifier"}, "baseline": False, "seeds": [0, 1],
           "search": {"lr": [1e-3, 1e-2], "budget_steps": 2},
           "task": {"source": "csv", "train_file": str(train), "eval_file": str(evalf)},
           "methods": [{"method": "lora", "r": 4}, {"method": "ia3"}],
           "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "device": "cpu", "num_threads": 1},
           "output_dir": str(tmp_path / "runs")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    first = run_cli("run", str(tmp_path / "c.yaml"), "-q")
    assert first.returncode == 0, first.stderr[-3000:]
    results = sorted((tmp_path / "runs").rglob("results.json"))
    assert len(results) == 4  # two methods x two seeds
    for path in results:
        res = json.loads(path.read_text())
        assert res["status"] == "ok" and res["params"]["agree"] is True, res.get("error")
        assert res["details"]["lr_search"]["chosen"] in (1e-3, 1e-2)
    again = run_cli("run", str(tmp_path / "c.yaml"), "-q")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in results] == [p.stat().st_mtime_ns for p in sorted((tmp_path / "runs").rglob("results.json"))]
    a, b = (str(p.parent / "adapter") for p in results if p.parent.name == "lora")
    out = run_cli("compose", "0.5*a + 0.5*b", "-a", f"a={a}", "-a", f"b={b}", "--out", str(tmp_path / "mix"), "--merge")
    assert out.returncode == 0, out.stderr[-3000:]
